"""DICOM Segmentation (SEG) → a label map on a series' canonical volume grid.

highdicom reads the object (segment descriptions, source references, frame decoding, 1-bit
unpacking); FedRad places **each frame by its own Plane Position and Orientation**, never by frame
order (producers store frames by segment, by position, ascending or descending, or shuffled) and
checks that it lies on the series' grid (:func:`~shared.imaging.volume_grid.place_plane`).

* BINARY frames are 0/1; FRACTIONAL frames are inside where ``value / MaximumFractionalValue >= 0.5``
  (the 2D SEG threshold); LABELMAP frames hold segment numbers.
* Segments the SEG has no frame for are empty (producers omit empty frames).
* The SEG must reference the series (ReferencedSeriesSequence, or source images that are slices of
  it) or reference nothing and share its Frame of Reference; its FrameOfReferenceUID must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from shared.imaging.volume_grid import OffGrid, place_plane
from shared.imaging.volume_labels import (
    Kind,
    LabelFileError,
    LabelReferences,
    SeriesTarget,
    VolumeLabels,
    apply_segment_resolution,
    paint,
)

FRACTIONAL_THRESHOLD = 0.5


def seg_references(ds: pydicom.Dataset) -> LabelReferences:
    """The series, source images and Frame of Reference a SEG header names (no pixels needed)."""
    series = {
        str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence") or [] if "SeriesInstanceUID" in item
    }
    sops = {
        str(ref.ReferencedSOPInstanceUID)
        for item in ds.get("ReferencedSeriesSequence") or []
        for ref in item.get("ReferencedInstanceSequence") or []
    }
    for group in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for derivation in group.get("DerivationImageSequence") or []:
            sops.update(str(s.ReferencedSOPInstanceUID) for s in derivation.get("SourceImageSequence") or [])
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    return LabelReferences("SEG", frozenset(series), frozenset(sops), frozenset({for_uid} - {""}))


def _item(group: pydicom.Dataset | None, sequence: str, keyword: str):  # noqa: ANN202 - a DICOM value or None
    if group is None or sequence not in group or not group[sequence].value:
        return None
    return group[sequence].value[0].get(keyword)


def _frame_attribute(per_frame: pydicom.Dataset | None, shared: pydicom.Dataset | None, sequence: str, keyword: str):  # noqa: ANN202
    value = _item(per_frame, sequence, keyword)
    return value if value is not None else _item(shared, sequence, keyword)


def read_seg(path: Path) -> hd.seg.Segmentation:
    """highdicom's view of a SEG file (frames decoded lazily); :class:`LabelFileError` if it is not one."""
    try:
        seg = hd.seg.segread(path, lazy_frame_retrieval=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom, highdicom: any failure makes the file unusable
        raise LabelFileError(
            Kind.UNREADABLE, f"not a DICOM SEG highdicom can read: {type(exc).__name__}: {exc}"[:300]
        ) from None
    return seg


def seg_labels(path: Path, target: SeriesTarget, labels: Sequence[str], name: str | None = None) -> VolumeLabels:
    """The SEG at ``path`` as a uint8 label map on ``target``'s grid (values in ``labels`` order), or its problems."""
    result = VolumeLabels(tuple(labels), name or str(path))
    uid = target.series_instance_uid
    try:
        seg = read_seg(Path(path))
        refs = seg_references(seg)
        refs.check(target)
        names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
        names = {n: names[n] for n in seg.segment_numbers if n in names}  # a LABELMAP's background is no segment
    except LabelFileError as exc:
        return result.fail(exc.kind, exc.detail, uid)
    values = apply_segment_resolution(result, names, uid)
    if any(p.fatal for p in result.problems):
        return result
    try:
        label_map, overlap = _paint_frames(seg, target, values)
    except OffGrid as exc:
        return result.fail(Kind.GEOMETRY_MISMATCH, str(exc), uid)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a frame highdicom cannot decode
        return result.fail(Kind.UNREADABLE, f"a frame cannot be decoded: {type(exc).__name__}: {exc}"[:300], uid)
    result.label_map, result.overlap_voxels = label_map, overlap
    return result


def _paint_frames(seg: hd.seg.Segmentation, target: SeriesTarget, values: dict) -> tuple[np.ndarray, int]:
    """Every frame of a wanted segment, placed by its own position; raises OffGrid for the first misplaced frame."""
    geometry = target.geometry
    label_map = np.zeros(geometry.shape, np.uint8)
    kind = hd.seg.SegmentationTypeValues(seg.segmentation_type)
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    lookup = np.zeros(max([*values, 0]) + 1, np.uint8)  # LABELMAP: stored segment number → label value
    for number, value in values.items():
        lookup[number] = value
    maximum = float(seg.get("MaximumFractionalValue", 255) or 255)
    overlap = 0
    for i in range(int(seg.number_of_frames)):
        group = per_frame[i] if i < len(per_frame) else None
        number = _frame_attribute(group, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if kind != hd.seg.SegmentationTypeValues.LABELMAP and int(number or 0) not in values:
            continue  # a segment the task does not want
        where = [_frame_attribute(group, shared, s, k) for s, k in _GEOMETRY]
        if any(v is None for v in where):
            missing = [s for (s, _), v in zip(_GEOMETRY, where, strict=True) if v is None]
            raise OffGrid(f"frame {i + 1} has no {', '.join(missing)}: its place in the volume is unknown")
        orientation, position, spacing = where
        try:
            plane = place_plane(geometry, orientation, position, spacing, int(seg.Rows), int(seg.Columns))
        except OffGrid as exc:
            raise OffGrid(f"frame {i + 1}: {exc}", exc.off_slice) from None
        stored = seg.get_stored_frame(i, as_index=True)
        if kind == hd.seg.SegmentationTypeValues.LABELMAP:
            frame = lookup[np.where(stored < len(lookup), stored, 0)]
            for value in np.unique(frame[frame > 0]):
                overlap += paint(label_map, plane.index, frame == value, int(value))
            continue
        inside = (
            stored / maximum >= FRACTIONAL_THRESHOLD if kind == hd.seg.SegmentationTypeValues.FRACTIONAL else stored > 0
        )
        overlap += paint(label_map, plane.index, inside, values[int(number)])
    return label_map, overlap


_GEOMETRY = (
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)
