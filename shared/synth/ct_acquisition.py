"""Where a synthetic CT scanner puts its slices, and what it reconstructs there.

The header must describe exactly the grid the voxels were sampled on, so the grid
is built first from numbers already rounded the way the header stores them
(positions to 1/1000 mm, pixel spacing to 1/10000 mm), and the phantom is then
sampled at the points those very numbers give.

Patient position → ImageOrientationPatient (row direction, then column direction),
the usual axial conventions of CT scanners:

====  =====================  ==========================================
HFS   ``1, 0, 0, 0, 1, 0``    image right = patient left, top = anterior
HFP   ``-1, 0, 0, 0, -1, 0``  image right = patient right, top = posterior
FFS   ``-1, 0, 0, 0, 1, 0``   image right = patient right, top = anterior
FFP   ``1, 0, 0, 0, -1, 0``   image right = patient left, top = posterior
====  =====================  ==========================================

Slice order (InstanceNumber 1 → N) follows the table into the gantry: head-first
scans run superior → inferior (z falls), feet-first inferior → superior (z rises);
``reverse`` (a site's caudocranial protocol) flips that. With the orientations above
the slice normal (row × column direction) is +z for head-first and −z for
feet-first, so the default order always runs *against* the normal and a reversed
scan runs *along* it: readers must sort by position, not trust either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shared.imaging.volume_geometry import VolumeGeometry, slice_stack_geometry
from shared.synth.ct_phantom import CTPhantom
from shared.synth.ct_profiles import Kernel

ORIENTATION: dict[str, tuple[float, float, float, float, float, float]] = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}
THICKNESS_SAMPLES = 3  # sub-slices averaged across the slice thickness (partial volume along z)
NOISE_GRAIN_PX = 0.7  # Gaussian sigma giving CT noise its correlated texture


@dataclass(frozen=True)
class SliceGrid:
    """Where each slice of a stack lies: the numbers its DICOM headers will hold, already rounded."""

    orientation: tuple[float, float, float, float, float, float]  # ImageOrientationPatient
    positions: np.ndarray  # (n, 3) ImagePositionPatient of each slice, in acquisition (instance) order
    pixel_spacing: tuple[float, float]  # PixelSpacing: (row spacing, column spacing)
    rows: int
    columns: int
    thickness: float  # SliceThickness (the sampling aperture across the slice)
    centre: tuple[float, float]  # (x, y) of the reconstruction centre, LPS mm

    @property
    def n_slices(self) -> int:
        return int(len(self.positions))

    @property
    def normal(self) -> np.ndarray:
        iop = np.asarray(self.orientation)
        return np.cross(iop[:3], iop[3:])

    @property
    def spacing(self) -> float:
        """Distance between consecutive slice centres (uniform by construction)."""
        return float(np.linalg.norm(self.positions[1] - self.positions[0])) if self.n_slices > 1 else self.thickness

    def geometry(self, frame_of_reference_uid: str = "") -> VolumeGeometry:
        """The [slice, row, column] geometry of the stack in instance order (the shared LPS contract)."""
        step = self.positions[1] - self.positions[0] if self.n_slices > 1 else self.normal * self.thickness
        return slice_stack_geometry(
            self.orientation,
            self.positions[0],
            step,
            self.pixel_spacing,
            (self.n_slices, self.rows, self.columns),
            frame_of_reference_uid,
        )

    def points(self, offset_mm: float = 0.0) -> np.ndarray:
        """(n, rows, columns, 3) LPS mm of every pixel centre, moved ``offset_mm`` along the normal."""
        iop = np.asarray(self.orientation)
        row_dir, col_dir = iop[:3], iop[3:]
        r = np.arange(self.rows, dtype=np.float64)[:, None, None] * self.pixel_spacing[0] * col_dir
        c = np.arange(self.columns, dtype=np.float64)[None, :, None] * self.pixel_spacing[1] * row_dir
        plane = r + c  # (rows, columns, 3)
        return self.positions[:, None, None, :] + plane[None] + offset_mm * self.normal


def axial_grid(
    position: str,
    shape: tuple[int, int, int],
    fov_mm: float,
    slice_spacing_mm: float,
    thickness_mm: float,
    centre: tuple[float, float, float],
    reverse: bool = False,
) -> SliceGrid:
    """An axial stack of ``shape`` (slices, rows, columns) for ``position``, centred on ``centre`` (LPS mm).

    Square pixels of ``fov_mm / columns``; slice order as in the module docstring."""
    n, rows, cols = shape
    iop = ORIENTATION[position]
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    px = round(fov_mm / cols, 4)
    direction = -1.0 if position.startswith("HF") else 1.0  # z step: into the gantry
    if reverse:
        direction = -direction
    cx, cy, cz = centre
    corner = np.array([cx, cy, 0.0]) - row_dir * px * (cols - 1) / 2 - col_dir * px * (rows - 1) / 2
    z = cz + direction * slice_spacing_mm * (np.arange(n) - (n - 1) / 2)
    positions = np.repeat(corner[None], n, axis=0)
    positions[:, 2] = z
    return SliceGrid(
        orientation=iop,
        positions=np.round(positions, 3),
        pixel_spacing=(px, px),
        rows=rows,
        columns=cols,
        thickness=float(thickness_mm),
        centre=(float(cx), float(cy)),
    )


def reconstruct(phantom: CTPhantom, grid: SliceGrid, kernel: Kernel, rng: np.random.Generator) -> np.ndarray:
    """HU (float32, [slice, row, column]) the scanner reconstructs: partial volume, kernel, noise.

    Partial volume: the mean of :data:`THICKNESS_SAMPLES` planes spread across the slice thickness.
    Kernel: in-plane Gaussian blur, then unsharp masking (edge overshoot) for sharp kernels.
    Noise: white noise with a short correlation (CT grain), scaled to ``kernel.noise_hu``."""
    offsets = (np.arange(THICKNESS_SAMPLES) + 0.5) / THICKNESS_SAMPLES - 0.5
    hu = np.mean([phantom.hu(grid.points(o * grid.thickness)) for o in offsets], axis=0).astype(np.float32)
    if kernel.blur_px > 0:
        hu = ndimage.gaussian_filter(hu, sigma=(0, kernel.blur_px, kernel.blur_px), mode="nearest")
    if kernel.sharpen > 0:
        hu = hu + kernel.sharpen * (hu - ndimage.gaussian_filter(hu, sigma=(0, 1.0, 1.0), mode="nearest"))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape), sigma=(0, NOISE_GRAIN_PX, NOISE_GRAIN_PX))
    noise *= kernel.noise_hu / max(float(noise.std()), 1e-6)
    return (hu + noise).astype(np.float32)


def outside_fov(grid: SliceGrid, fov_mm: float) -> np.ndarray:
    """bool (rows, columns): pixels outside the reconstruction circle (diameter ``fov_mm``) around its centre."""
    pts = grid.points()[0, ..., :2]
    return np.hypot(pts[..., 0] - grid.centre[0], pts[..., 1] - grid.centre[1]) > fov_mm / 2


def encode_hu(hu: np.ndarray, slope: float, intercept: float, lo: int, hi: int, dtype: type[np.integer]) -> np.ndarray:
    """HU → stored values: ``round((HU - intercept) / slope)``, clipped to what BitsStored holds."""
    return np.clip(np.rint((hu - intercept) / slope), lo, hi).astype(dtype)
