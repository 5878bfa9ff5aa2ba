"""Enhanced (multi-frame) CT/MR objects: one slice record per frame, from the functional groups.

An Enhanced CT/MR Image (and its Legacy Converted form) stores a whole stack in one file; each frame's position,
orientation, pixel spacing and rescale live in the Per-frame Functional Groups, with the Shared Functional Groups
as the fallback for what is the same for every frame. Each frame becomes a
:class:`~shared.imaging.slice_records.SliceRecord` with its ``frame`` index, so the planner orders and checks frames
exactly like the files of a classic series. A file holding several stacks, orientations or time points is **not
split**: the planner rejects it (duplicate positions, mixed orientation), because which stack a task wants is the
task's choice, not the reader's. Any other multi-frame object gets ``unsupported`` set, which the planner reports as
``unsupported-multi-frame``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID

from shared.imaging.dicom_reader import _floats, _number, _strings, _text

if TYPE_CHECKING:
    from shared.imaging.slice_records import SliceRecord

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
# Multi-frame objects whose functional groups give each frame its own position and orientation.
ENHANCED_SOP_CLASSES = frozenset({ENHANCED_CT, LEGACY_ENHANCED_CT, ENHANCED_MR, LEGACY_ENHANCED_MR})
FRAME_TYPE_SEQUENCES = ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence")


def _items(ds: pydicom.Dataset, keyword: str) -> list[pydicom.Dataset] | None:
    try:
        value = ds.get(keyword)
        return None if value is None else list(value)
    except Exception:
        return None


def _macro(item: pydicom.Dataset, shared: pydicom.Dataset, sequence: str) -> pydicom.Dataset | None:
    """The first item of functional group ``sequence``: the frame's own, else the shared one, else ``None``."""
    for source in (item, shared):
        found = _items(source, sequence)
        if found:
            return found[0]
    return None


def _sop_class_name(uid: str) -> str:
    try:
        return UID(uid).name if uid else "object without SOPClassUID"
    except Exception:
        return uid


def frame_records(ds: pydicom.Dataset, record: SliceRecord) -> list[SliceRecord]:
    """One record per frame of an Enhanced CT/MR object ``ds``; ``[record]`` with ``unsupported`` set otherwise.

    ``record`` is the file-level record (:func:`shared.imaging.slice_records.file_record`)."""
    n = record.number_of_frames
    if record.sop_class_uid not in ENHANCED_SOP_CLASSES:
        what = _sop_class_name(record.sop_class_uid)
        why = f"{n} frames in one {what} object; only Enhanced CT/MR frames carry their own position"
        return [replace(record, unsupported=why)]
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    shared_items = _items(ds, "SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else pydicom.Dataset()
    if not per_frame or len(per_frame) != n:
        found = "no" if not per_frame else str(len(per_frame))
        why = f"{_sop_class_name(record.sop_class_uid)} with {found} per-frame functional group items for {n} frames"
        return [replace(record, unsupported=why)]
    records = []
    for index, item in enumerate(per_frame):
        position = _macro(item, shared, "PlanePositionSequence")
        orientation = _macro(item, shared, "PlaneOrientationSequence")
        measures = _macro(item, shared, "PixelMeasuresSequence")
        transform = _macro(item, shared, "PixelValueTransformationSequence")
        frame_type = next((m for m in (_macro(item, shared, s) for s in FRAME_TYPE_SEQUENCES) if m is not None), None)
        empty = pydicom.Dataset()
        records.append(
            replace(
                record,
                frame=index,
                position=_floats(position or empty, "ImagePositionPatient", 3),
                orientation=_floats(orientation or empty, "ImageOrientationPatient", 6),
                pixel_spacing=_floats(measures or empty, "PixelSpacing", 2),
                rescale_slope=_number(transform or empty, "RescaleSlope", 1.0),
                rescale_intercept=_number(transform or empty, "RescaleIntercept", 0.0),
                rescale_type=_text(transform or empty, "RescaleType").upper(),
                image_type=_strings(frame_type, "FrameType") if frame_type is not None else record.image_type,
                has_modality_lut=False,  # enhanced objects carry their rescale in the functional groups
            )
        )
    return records
