"""RT Structure Set (RTSTRUCT) → a label map on a series' canonical volume grid.

An RTSTRUCT draws each ROI as CLOSED_PLANAR polygons in patient millimetres, one or more per slice.
FedRad, for each contour:

* finds the slice it lies on: the grid axis nearest the polygon's normal (Newell's method), the
  contour's mean index along that axis rounded to a slice, accepted when the contour is within
  :data:`SLICE_TOLERANCE` of the slice spacing of it (a contour drawn on a 2.5 mm series but 1.25 mm
  from every slice came from another series: ``label-contour-off-slice``, never snapped);
* turns its points into (row, column) voxel indices of that slice (the series' IPP/IOP/PixelSpacing,
  through the volume affine) and fills it: a voxel is inside when its **centre** is inside the polygon;
* combines the contours of one ROI on one slice by the **even-odd rule** (XOR): a contour inside
  another is a hole, a contour inside a hole an island, as DICOM's nested-contour encoding means.

ROI names come from StructureSetROISequence; the structure set must reference the series (or only
its Frame of Reference) and every wanted ROI must be in the series' Frame of Reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as Polygon

from shared.imaging.volume_geometry import VolumeGeometry
from shared.imaging.volume_labels import (
    AXIS_NAMES,
    Kind,
    LabelFileError,
    LabelReferences,
    SeriesTarget,
    VolumeLabels,
    apply_segment_resolution,
    fmt_mm,
    paint,
)

SLICE_TOLERANCE = 0.25  # fraction of the slice spacing a contour may lie off a slice (rounding, not another grid)
PLANE_COSINE = 0.999  # a contour's normal within ~2.6 degrees of a grid axis lies in a slice plane


class ContourError(Exception):
    """A contour that cannot be used; ``kind`` is its problem code."""

    def __init__(self, detail: str, kind: Kind = Kind.CONTOUR_OFF_SLICE) -> None:
        super().__init__(detail)
        self.kind = kind


def rtstruct_references(ds: pydicom.Dataset) -> LabelReferences:
    """The series, images and Frames of Reference an RTSTRUCT header names."""
    series, sops, frames = set(), set(), set()
    for ref_for in ds.get("ReferencedFrameOfReferenceSequence") or []:
        frames.add(str(ref_for.get("FrameOfReferenceUID", "") or ""))
        for study in ref_for.get("RTReferencedStudySequence") or []:
            for ref_series in study.get("RTReferencedSeriesSequence") or []:
                series.add(str(ref_series.get("SeriesInstanceUID", "") or ""))
                sops.update(str(i.ReferencedSOPInstanceUID) for i in ref_series.get("ContourImageSequence") or [])
    for roi in ds.get("StructureSetROISequence") or []:
        frames.add(str(roi.get("ReferencedFrameOfReferenceUID", "") or ""))
    return LabelReferences("RTSTRUCT", frozenset(series - {""}), frozenset(sops), frozenset(frames - {""}))


def read_rtstruct(path: Path) -> pydicom.Dataset:
    """The structure set at ``path``; :class:`LabelFileError` when it is not a readable RTSTRUCT."""
    try:
        ds = pydicom.dcmread(path)
        modality = str(ds.get("Modality", ""))
        rois = ds.get("StructureSetROISequence")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom: any failure makes the file unusable
        raise LabelFileError(Kind.UNREADABLE, f"not a readable DICOM file: {type(exc).__name__}: {exc}"[:300]) from None
    if modality != "RTSTRUCT" or rois is None:
        raise LabelFileError(Kind.UNREADABLE, f"not an RT Structure Set (Modality {modality!r})")
    return ds


def rtstruct_labels(path: Path, target: SeriesTarget, labels: Sequence[str], name: str | None = None) -> VolumeLabels:
    """The RTSTRUCT at ``path`` as a uint8 label map on ``target``'s grid (values in ``labels`` order)."""
    result = VolumeLabels(tuple(labels), name or str(path))
    uid = target.series_instance_uid
    try:
        ds = read_rtstruct(Path(path))
        rtstruct_references(ds).check(target)
        rois = {int(r.ROINumber): r for r in ds.StructureSetROISequence}
        names = {number: str(r.get("ROIName", "") or "") for number, r in rois.items()}
        contours = {
            int(c.ReferencedROINumber): c.get("ContourSequence") or [] for c in ds.get("ROIContourSequence") or []
        }
    except LabelFileError as exc:
        return result.fail(exc.kind, exc.detail, uid)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return result.fail(Kind.UNREADABLE, f"malformed structure set: {type(exc).__name__}: {exc}"[:300], uid)
    values = apply_segment_resolution(result, names, uid)
    if any(p.fatal for p in result.problems):
        return result
    label_map = np.zeros(target.geometry.shape, np.uint8)
    for number, value in sorted(values.items(), key=lambda item: item[1]):
        roi_for = str(rois[number].get("ReferencedFrameOfReferenceUID", "") or "")
        if roi_for and target.frame_of_reference_uid and roi_for != target.frame_of_reference_uid:
            return result.fail(
                Kind.FRAME_OF_REFERENCE,
                f"ROI {names[number]!r} is in Frame of Reference {roi_for}, the series in {target.frame_of_reference_uid}",
                uid,
            )
        try:
            slices = fill_roi(contours.get(number, []), target.geometry)
        except ContourError as exc:
            return result.fail(exc.kind, f"ROI {names[number]!r}: {exc}", uid)
        except (TypeError, ValueError) as exc:  # ContourData that are not numbers
            return result.fail(Kind.UNREADABLE, f"ROI {names[number]!r}: {type(exc).__name__}: {exc}"[:300], uid)
        for (axis, k), mask in slices.items():
            index = [slice(None)] * 3
            index[axis] = k
            result.overlap_voxels += paint(label_map, tuple(index), mask, value)
    result.label_map = label_map
    return result


def fill_roi(contours: Sequence[pydicom.Dataset], geometry: VolumeGeometry) -> dict[tuple[int, int], np.ndarray]:
    """(slice axis, slice index) → bool plane: one ROI's contours filled, even-odd within each slice."""
    planes: dict[tuple[int, int], np.ndarray] = {}
    off_slice: list[str] = []  # every misplaced contour is counted, the first one described
    for n, contour in enumerate(contours, start=1):
        kind = str(contour.get("ContourGeometricType", "") or "")
        if kind != "CLOSED_PLANAR":
            raise ContourError(f"contour {n} is {kind or 'untyped'}, not CLOSED_PLANAR", Kind.CONTOUR_UNSUPPORTED)
        points = np.asarray([float(v) for v in contour.get("ContourData") or []], dtype=np.float64)
        if points.size % 3:
            raise ContourError(f"contour {n} has {points.size} coordinates, not x/y/z triples", Kind.UNREADABLE)
        if points.size < 9:
            continue  # fewer than 3 points enclose no voxel centre
        try:
            axis, k, inside = fill_contour(points.reshape(-1, 3), geometry)
        except ContourError as exc:
            off_slice.append(f"contour {n}: {exc}")
            continue
        if inside is None:
            continue
        key = (axis, k)
        planes[key] = planes[key] ^ inside if key in planes else inside
    if off_slice:
        more = f" (and {len(off_slice) - 1} more contours)" if len(off_slice) > 1 else ""
        raise ContourError(off_slice[0] + more)
    return planes


def newell_normal(points: np.ndarray) -> np.ndarray:
    """The (unnormalised) normal of a closed polygon, robust to collinear runs (Newell's method)."""
    following = np.roll(points, -1, axis=0)
    return np.cross(points, following).sum(axis=0)


def fill_contour(points: np.ndarray, geometry: VolumeGeometry) -> tuple[int, int, np.ndarray | None]:
    """(slice axis, slice index, bool plane or None if degenerate) for one closed contour (N, 3) in LPS mm."""
    normal = newell_normal(points - points.mean(axis=0))
    if not np.any(normal):
        return 0, 0, None  # collinear points: no area
    normal = normal / np.linalg.norm(normal)
    cosines = np.abs(geometry.directions.T @ normal)
    axis = int(np.argmax(cosines))
    if cosines[axis] < PLANE_COSINE:
        angle = np.degrees(np.arccos(min(1.0, cosines[axis])))
        raise ContourError(f"its plane is tilted {angle:.1f} degrees from the series' {AXIS_NAMES[axis]} slices")
    index = geometry.patient_to_index(points)
    depth = index[:, axis]
    spacing = geometry.spacing[axis]
    if (depth.max() - depth.min()) > 2 * SLICE_TOLERANCE:
        raise ContourError(f"its points spread over {(depth.max() - depth.min()) * spacing:.2f} mm: not planar")
    centre = float(depth.mean())
    k = round(centre)
    at = fmt_mm(points.mean(axis=0))
    if abs(centre - k) > SLICE_TOLERANCE:
        raise ContourError(
            f"it lies at {at}, {abs(centre - k) * spacing:.2f} mm from the nearest slice "
            f"(slices {spacing:g} mm apart along {AXIS_NAMES[axis]}; tolerance {SLICE_TOLERANCE * spacing:.2f} mm)"
        )
    if not 0 <= k < geometry.shape[axis]:
        raise ContourError(f"it lies at {at}, outside the series (slice {k} of {geometry.shape[axis]})")
    return axis, k, rasterise(np.delete(index, axis, axis=1), tuple(np.delete(geometry.shape, axis)))


def rasterise(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool (shape) mask of the pixels whose centre lies inside the polygon ``vertices`` (N, 2) in index units."""
    mask = np.zeros(shape, dtype=bool)
    lo = np.maximum(np.floor(vertices.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(vertices.max(axis=0)).astype(int), np.asarray(shape) - 1)
    if np.any(hi < lo):
        return mask  # entirely outside the image
    grid = np.stack(np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij"), axis=-1)
    inside = Polygon(vertices).contains_points(grid.reshape(-1, 2)).reshape(grid.shape[:2])
    mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = inside
    return mask
