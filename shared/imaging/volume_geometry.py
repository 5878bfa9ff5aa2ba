"""Where a volume's voxels lie in the patient: one affine, one convention, used by every CT/MR module.

FedRad states volumes in **LPS** patient coordinates (DICOM's own: +x towards the patient's Left,
+y Posterior, +z Superior, in millimetres), so DICOM positions and directions are used as they are.

A :class:`VolumeGeometry` pairs an array shape with a 4×4 ``affine`` that maps **array-order**
indices ``(a0, a1, a2, 1)`` (the order NumPy indexes the array: ``volume[a0, a1, a2]``) to
``(x, y, z, 1)`` in LPS mm, voxel centres. For a DICOM slice stack held as ``[slice, row, column]``:

* column index (a2) moves along ImageOrientationPatient[0:3] by PixelSpacing[1];
* row index (a1) moves along ImageOrientationPatient[3:6] by PixelSpacing[0];
* slice index (a0) moves by the step between consecutive ImagePositionPatient values;
* ``affine[:3, 3]`` is the first slice's ImagePositionPatient (the centre of its first pixel).

**Canonical orientation** (:func:`to_canonical`): the array is permuted and flipped so that axis 0
runs towards Superior (+z), axis 1 towards Posterior (+y) and axis 2 towards Left (+x). An axial
slice ``volume[k]`` then shows anterior at the top and the patient's right on the image's left,
the way radiologists read it, whatever the patient position (head/feet first, supine/prone) or
slice order of the acquisition. An oblique acquisition keeps its residual rotation in the affine
(nearest axes are chosen, nothing is resampled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CANONICAL = "LPS"  # the convention stated in model cards: axis 0 → S, axis 1 → P, axis 2 → L (see module docstring)


@dataclass(frozen=True)
class VolumeGeometry:
    """An array shape plus the affine from array-order voxel indices to LPS millimetres (module docstring)."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) float64
    frame_of_reference_uid: str = ""

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"a volume affine is 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along array axes 0, 1, 2."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def directions(self) -> np.ndarray:
        """(3, 3): column ``a`` is the unit LPS direction in which array axis ``a`` grows."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    def index_to_patient(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """Array-order voxel indices (..., 3) → LPS mm (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, point: np.ndarray | Sequence[float]) -> np.ndarray:
        """LPS mm (..., 3) → fractional array-order voxel indices (..., 3)."""
        pts = np.asarray(point, dtype=np.float64) - self.affine[:3, 3]
        return pts @ np.linalg.inv(self.affine[:3, :3]).T


def slice_stack_geometry(
    orientation: Sequence[float],
    first_position: Sequence[float],
    slice_step: Sequence[float],
    pixel_spacing: Sequence[float],
    shape: tuple[int, int, int],
    frame_of_reference_uid: str = "",
) -> VolumeGeometry:
    """The geometry of a ``[slice, row, column]`` stack from its DICOM attributes.

    ``orientation``: ImageOrientationPatient (row direction, then column direction); ``first_position``:
    ImagePositionPatient of slice 0; ``slice_step``: the LPS vector from one slice's position to the next
    (taken from the positions, never from SliceThickness); ``pixel_spacing``: PixelSpacing (row spacing,
    column spacing)."""
    iop = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:6]
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * col_spacing
    affine[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return VolumeGeometry(shape, affine, frame_of_reference_uid)


def canonical_transform(geometry: VolumeGeometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(axis permutation, flips) taking ``geometry``'s array to canonical order (see :func:`to_canonical`).

    ``perm[t]`` is the source axis that becomes target axis ``t`` (target 0 ↔ z, 1 ↔ y, 2 ↔ x);
    ``flips[t]`` says whether that axis is reversed. Chosen greedily by the largest direction cosine."""
    cosines = np.abs(geometry.directions)  # rows: x, y, z; columns: source axes
    perm = [-1, -1, -1]
    free_axes = {0, 1, 2}
    for patient_axis in np.argsort(-cosines.max(axis=1)):  # the most clearly aligned patient axis picks first
        source = max(free_axes, key=lambda a: cosines[patient_axis, a])
        free_axes.remove(source)
        perm[2 - int(patient_axis)] = source  # x → target 2, y → target 1, z → target 0
    flips = tuple(bool(geometry.directions[2 - t, perm[t]] < 0) for t in range(3))
    return (perm[0], perm[1], perm[2]), flips  # type: ignore[return-value]


def canonical_geometry(geometry: VolumeGeometry) -> VolumeGeometry:
    """The geometry :func:`to_canonical` gives ``geometry``'s array, known before any pixel is read."""
    perm, flips = canonical_transform(geometry)
    affine = np.eye(4)
    affine[:3, :3] = geometry.affine[:3, list(perm)]
    affine[:3, 3] = geometry.affine[:3, 3]
    shape = tuple(geometry.shape[a] for a in perm)
    for t, flip in enumerate(flips):
        if flip:
            affine[:3, 3] = affine[:3, 3] + affine[:3, t] * (shape[t] - 1)  # the old last voxel is the new first
            affine[:3, t] = -affine[:3, t]
    return VolumeGeometry(shape, affine, geometry.frame_of_reference_uid)  # type: ignore[arg-type]


def to_canonical(volume: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """``volume`` (3D, array order of ``geometry``) reordered so axis 0 → S, 1 → P, 2 → L; its new geometry.

    Only permutes and flips (no interpolation); the returned array is a view where NumPy allows."""
    if volume.shape != geometry.shape:
        raise ValueError(f"volume shape {volume.shape} does not match its geometry {geometry.shape}")
    perm, flips = canonical_transform(geometry)
    out = np.transpose(volume, perm)
    for t, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=t)
    return out, canonical_geometry(geometry)


def acquisition_view(canonical: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """A view of a canonical-order array in ``geometry``'s (acquisition) array order: the inverse of :func:`to_canonical`.

    Why: assembly writes slice ``k`` into ``view[k]`` and the values land directly in canonical layout, so a
    preallocated (memory-mapped) canonical array is filled without a second copy."""
    perm, flips = canonical_transform(geometry)
    expected = tuple(geometry.shape[a] for a in perm)
    if canonical.shape != expected:
        raise ValueError(f"canonical array shape {canonical.shape} is not {expected}")
    out = canonical
    for t, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=t)
    return np.transpose(out, np.argsort(perm))


def resampled_geometry(geometry: VolumeGeometry, spacing: Sequence[float]) -> VolumeGeometry:
    """``geometry`` resampled to ``spacing`` mm along array axes 0, 1, 2: same directions, same first voxel centre.

    The new grid keeps the first voxel centre (the affine's origin) and holds every point whose centre lies within
    the old grid's centres: ``n' = floor((n - 1) * old / new) + 1`` along each axis."""
    new = np.asarray(spacing, dtype=np.float64)
    if new.shape != (3,) or not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise ValueError(f"a target spacing is three positive millimetre values, got {spacing!r}")
    old = np.asarray(geometry.spacing)
    shape = tuple(int(np.floor((n - 1) * o / s + 1e-6)) + 1 for n, o, s in zip(geometry.shape, old, new))
    affine = geometry.affine.copy()
    affine[:3, :3] = geometry.directions * new
    return VolumeGeometry(shape, affine, geometry.frame_of_reference_uid)  # type: ignore[arg-type]
