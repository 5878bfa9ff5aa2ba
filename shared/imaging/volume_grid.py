"""Placing a 2D plane of labels (a SEG frame, a rasterised contour slice) onto a volume's voxel grid.

Labels are never resampled: a plane is usable only when its pixel centres *are* voxel centres of the
target (within :data:`~shared.imaging.volume_labels.GRID_TOLERANCE` voxels). This module works out
where, or says in millimetres why not, so every label source reports grid problems the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.imaging.volume_geometry import VolumeGeometry
from shared.imaging.volume_labels import AXIS_NAMES, GRID_TOLERANCE, fmt_mm


class OffGrid(Exception):
    """The plane does not lie on the target grid; the message says how (for a ``label-geometry-mismatch``)."""

    def __init__(self, detail: str, off_slice: bool = False) -> None:
        super().__init__(detail)
        self.off_slice = off_slice  # in-plane grid fits, but the plane is between slices or outside the volume


@dataclass(frozen=True)
class PlaneOnGrid:
    """Where a (rows, columns) plane lands: voxel index arrays that broadcast to (rows, columns)."""

    index: tuple  # for ``volume[index]``: one int and two index arrays, in target axis order
    slice_axis: int  # the target axis the plane is perpendicular to


def _unit_axis(step: np.ndarray, span: int) -> tuple[int, int] | None:
    """(axis, ±1) when an index-space step is one voxel along one target axis (within tolerance over ``span``)."""
    axis = int(np.argmax(np.abs(step)))
    ideal = np.zeros(3)
    ideal[axis] = np.sign(step[axis])
    if np.max(np.abs(step - ideal)) * max(span, 1) <= GRID_TOLERANCE:
        return axis, int(ideal[axis])
    return None


def place_plane(
    geometry: VolumeGeometry,
    orientation: Sequence[float],
    position: Sequence[float],
    pixel_spacing: Sequence[float],
    rows: int,
    columns: int,
) -> PlaneOnGrid:
    """Voxel indices of a DICOM plane (ImageOrientationPatient, ImagePositionPatient, PixelSpacing, size).

    Raises :class:`OffGrid` naming the disagreement: orientation or pixel spacing (another in-plane
    grid), a fractional in-plane offset, a position between slices, or pixels outside the volume."""
    iop = np.asarray(orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    to_index = np.linalg.inv(geometry.affine[:3, :3])
    col_step = to_index @ (iop[:3] * col_spacing)  # one column to the right
    row_step = to_index @ (iop[3:6] * row_spacing)  # one row down
    col_axis, row_axis = _unit_axis(col_step, columns - 1), _unit_axis(row_step, rows - 1)
    if col_axis is None or row_axis is None or col_axis[0] == row_axis[0]:
        spacing = geometry.spacing
        aligned = [AXIS_NAMES[a] for a in (int(np.argmax(np.abs(col_step))), int(np.argmax(np.abs(row_step))))]
        raise OffGrid(
            f"in-plane grid differs: orientation {list(np.round(iop, 4))} with pixel spacing {row_spacing:g} x "
            f"{col_spacing:g} mm, nearest series axes {aligned[1]}/{aligned[0]} with spacing "
            f"{spacing[AXIS_NAMES.index(aligned[1])]:g} x {spacing[AXIS_NAMES.index(aligned[0])]:g} mm"
        )
    slice_axis = 3 - col_axis[0] - row_axis[0]
    origin = geometry.patient_to_index(np.asarray(position, dtype=np.float64))
    nearest = np.round(origin)
    frac = origin - nearest
    in_plane = [a for a in (row_axis[0], col_axis[0]) if abs(frac[a]) > GRID_TOLERANCE]
    if in_plane:
        shift = geometry.affine[:3, :3] @ np.where(np.isin(np.arange(3), in_plane), frac, 0.0)
        raise OffGrid(f"pixels fall between the series' voxels: in-plane offset {fmt_mm(shift)}")
    spacing = geometry.spacing[slice_axis]
    if abs(frac[slice_axis]) > GRID_TOLERANCE:
        raise OffGrid(
            f"plane at {fmt_mm(position)} lies {abs(frac[slice_axis]) * spacing:.2f} mm from the nearest slice "
            f"(slices {spacing:g} mm apart along {AXIS_NAMES[slice_axis]})",
            off_slice=True,
        )
    start = nearest.astype(int)
    n = geometry.shape
    if not 0 <= start[slice_axis] < n[slice_axis]:
        raise OffGrid(
            f"plane at {fmt_mm(position)} is outside the series: slice {start[slice_axis]} of "
            f"{n[slice_axis]} along {AXIS_NAMES[slice_axis]}",
            off_slice=True,
        )
    rows_at = start[row_axis[0]] + row_axis[1] * np.arange(rows)
    cols_at = start[col_axis[0]] + col_axis[1] * np.arange(columns)
    for axis, at in ((row_axis[0], rows_at), (col_axis[0], cols_at)):
        if at.min() < 0 or at.max() >= n[axis]:
            raise OffGrid(
                f"plane of {rows} x {columns} pixels at {fmt_mm(position)} reaches voxels {at.min()}..{at.max()} "
                f"along {AXIS_NAMES[axis]}, the series has 0..{n[axis] - 1}"
            )
    index: list = [None, None, None]
    index[slice_axis] = int(start[slice_axis])
    index[row_axis[0]] = rows_at[:, None]
    index[col_axis[0]] = cols_at[None, :]
    return PlaneOnGrid(tuple(index), slice_axis)
