"""Volumes → model inputs: resample to a target spacing, then CT windowing or MR normalisation to [0, 1].

* **Resampling** (:func:`resample`): SciPy ``ndimage.affine_transform``, trilinear (order 1) for images, nearest
  neighbour (order 0) for label maps, on the grid :func:`~shared.imaging.volume_geometry.resampled_geometry`
  defines: same directions, the first voxel centre stays the origin, exactly the target spacing. SciPy, not torch:
  ingest workers must start fast (torch's import takes seconds; :mod:`shared.imaging.planar` avoids it for the same
  reason), and ``affine_transform`` computes coordinates on the fly, so a 512×512×300 CT needs no coordinate
  arrays. Shrinking an axis by a factor f > 1 first smooths it with a Gaussian of sigma (f − 1) / 2 voxels
  (scikit-image's anti-aliasing rule) so thin bright structures do not alias; label maps are never smoothed.
* **CT** (:func:`window_ct`): a window (level L, width W, in HU) maps [L − W/2, L + W/2] to [0, 1], clipped.
  Presets: :data:`WINDOW_PRESETS`, or any level/width.
* **MR** (:func:`normalise_mr`): MR values have no unit and vary by scanner, coil and sequence, so each volume is
  scaled on its own: 0 is the ``mr_low_pct`` percentile of all voxels (the background/noise floor), 1 is the
  ``mr_high_pct`` percentile of the body (voxels above the volume's mean, which background air is below), clipped.
  The body sets the top so that how much air surrounds it does not matter, and the high percentile ignores a few
  hot voxels (fat, vessels, coil hot spots); dark tissue inside the body keeps its contrast. Not a z-score: FedRad's
  model inputs are [0, 1] (the cache stores them as uint16, :mod:`shared.imaging.pack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat
from scipy import ndimage

from shared.config import StrictModel
from shared.imaging.volume_geometry import VolumeGeometry, resampled_geometry

WindowPreset = Literal["soft_tissue", "lung", "bone", "brain"]
WINDOW_PRESETS: dict[str, tuple[float, float]] = {  # name → (level, width), HU
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


class CTWindow(StrictModel):
    """A custom CT window, in Hounsfield units."""

    level: float
    width: float = Field(gt=0)


class VolumeParams(StrictModel):
    """How an assembled volume becomes a model input (part of the cache key, like PreprocessConfig)."""

    target_spacing_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None,
        description="Voxel size after resampling, mm, in canonical axis order (S, P, L) = (z, y, x); none keeps it.",
    )
    ct_window: WindowPreset | CTWindow = Field("soft_tissue", description="CT window: a preset or {level, width}.")
    mr_low_pct: float = Field(0.5, ge=0, lt=50, description="MR: percentile of all voxels mapped to 0.")
    mr_high_pct: float = Field(99.5, gt=50, le=100, description="MR: percentile of the body mapped to 1.")

    def window(self) -> tuple[float, float]:
        """(level, width) of the CT window, HU."""
        if isinstance(self.ct_window, CTWindow):
            return self.ct_window.level, self.ct_window.width
        return WINDOW_PRESETS[self.ct_window]

    def cache_tag(self) -> str:
        """A short string that changes whenever any preprocessing parameter changes."""
        spacing = "native" if self.target_spacing_mm is None else "x".join(f"{s:g}" for s in self.target_spacing_mm)
        level, width = self.window()
        return f"v{spacing}-L{level:g}W{width:g}-mr{self.mr_low_pct:g}-{self.mr_high_pct:g}-v1"


def resample(
    array: np.ndarray, geometry: VolumeGeometry, spacing: Sequence[float], *, labels: bool = False
) -> tuple[np.ndarray, VolumeGeometry]:
    """``array`` resampled to ``spacing`` mm along its axes 0, 1, 2, and its new geometry (module docstring).

    ``labels=True``: nearest neighbour, no smoothing, the input dtype kept (a label map stays a label map)."""
    target = resampled_geometry(geometry, spacing)
    step = np.asarray(spacing, dtype=np.float64) / np.asarray(geometry.spacing)  # input voxels per output voxel
    if target.shape == geometry.shape and np.allclose(step, 1.0):
        return (array.copy() if labels else np.array(array, dtype=np.float32)), geometry
    if labels:
        out = ndimage.affine_transform(
            array, step, output_shape=target.shape, order=0, mode="nearest", output=array.dtype
        )
        return out, target
    src = np.asarray(array, dtype=np.float32)
    sigma = np.maximum(0.0, (step - 1.0) / 2.0)
    if np.any(sigma > 0):
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    out = ndimage.affine_transform(
        src, step, output_shape=target.shape, order=1, mode="nearest", output=np.float32, prefilter=False
    )
    return out, target


def window_ct(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU → [0, 1]: ``level - width / 2`` → 0, ``level + width / 2`` → 1, clipped (float32, a new array)."""
    out = np.subtract(hu, np.float32(level - width / 2.0), dtype=np.float32)
    out *= np.float32(1.0 / width)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_mr(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """MR values → [0, 1] (module docstring): low percentile of all voxels → 0, high percentile of the body → 1."""
    values = np.asarray(values, dtype=np.float32)
    body = values[values > values.mean()]
    lo = float(np.percentile(values, low_pct))
    hi = float(np.percentile(body, high_pct)) if body.size else float(values.max())
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float32)
    out = np.subtract(values, np.float32(lo), dtype=np.float32)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def preprocess_volume(
    array: np.ndarray, geometry: VolumeGeometry, dicom_modality: str, params: VolumeParams
) -> tuple[np.ndarray, VolumeGeometry]:
    """An assembled volume (canonical, CT in HU) → (model input in [0, 1] float32, its geometry).

    Resampling comes first so it interpolates physical values (HU), before the non-linear window clips them."""
    if params.target_spacing_mm is not None:
        array, geometry = resample(array, geometry, params.target_spacing_mm)
    if dicom_modality.upper() == "CT":
        return window_ct(array, *params.window()), geometry
    return normalise_mr(array, params.mr_low_pct, params.mr_high_pct), geometry
