"""Plan CT/MR volumes from slice headers alone: group slices into series, order them, check the stack is regular.

Why headers only: a whole export is grouped and checked before one pixel is decoded, so a broken series costs
header reads, and a good one is decoded once, straight into its place (:mod:`shared.imaging.volume`).

* **Grouping**: slices group by SeriesInstanceUID within a FrameOfReferenceUID; a multi-frame object is a volume
  on its own (its SOPInstanceUID is part of the key), frames of several objects are never combined.
* **Order**: by the position projected on the slice normal (the cross product of ImageOrientationPatient's row
  and column directions); file names and InstanceNumber are ignored. Spacing comes from the positions, never from
  SliceThickness or SpacingBetweenSlices.
* **Dropped with a note, not rejected**: localizer (scout) images inside a series (ImageType or FrameType value
  LOCALIZER); a second copy of the same SOP instance (the first in path order is kept, as the scan does).
* **Rejected, one verdict per series** (:class:`SeriesRejection`, reason code, detail, every file involved): see
  :data:`REASONS`. The first failing check in :func:`plan_group`'s order is the series' reason.
* **Rescale**: slope/intercept may differ between slices; each slice's own is applied when it is decoded, so this
  is noted, not rejected. Rejected when a slope/intercept is unusable or RescaleType names different units.

Tolerances (:class:`PlanParams`, defaults): a step between slices is regular within ``max(position_tolerance_mm,
spacing_tolerance × spacing)`` (0.05 mm or 2 %: DICOM positions are decimal strings, often rounded to 0.01 mm; the
spacing is the mean of the steps near the median step); a step that is a whole multiple of the spacing within
that tolerance is a gap of missing slices; two slices closer than ``position_tolerance_mm`` along the normal share
a position; directions agree within ``orientation_tolerance`` (1e-3) per direction cosine; pixel spacings within
``pixel_spacing_tolerance_mm`` (0.001 mm); a tilt (GantryDetectorTilt, or the angle between the slice step and the
normal) up to ``max_tilt_degrees`` (0.1°) is accepted, and no slice may sit further than the step tolerance
in-plane from the line through the stack; at least ``min_slices`` (8) slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from shared.imaging.reasons import EXPLANATIONS, Reason, Rejection
from shared.imaging.series_checks import (
    PlanParams,
    check_geometry_present,
    check_grayscale,
    check_header_tilt,
    check_multi_frame,
    check_rescale,
    check_same_matrix,
    common_orientation,
    common_pixel_spacing,
    drop_localizers,
    drop_repeated_copies,
    order_and_space,
)
from shared.imaging.slice_records import SliceRecord
from shared.imaging.volume_geometry import VolumeGeometry, canonical_geometry, slice_stack_geometry

REASONS = frozenset(
    {
        Reason.UNSUPPORTED_MULTI_FRAME,
        Reason.NOT_GRAYSCALE,
        Reason.SERIES_LOCALIZER,
        Reason.MISSING_GEOMETRY,
        Reason.SERIES_MIXED_ORIENTATION,
        Reason.SERIES_MIXED_MATRIX,
        Reason.SERIES_MIXED_PIXEL_SPACING,
        Reason.SERIES_RESCALE,
        Reason.SERIES_TOO_FEW_SLICES,
        Reason.SERIES_GANTRY_TILT,
        Reason.SERIES_DUPLICATE_POSITION,
        Reason.SERIES_MISSING_SLICES,
        Reason.SERIES_UNEVEN_SPACING,
    }
)


class SeriesKey(NamedTuple):
    """What one planned volume is: a series within a frame of reference (and the object, for a multi-frame one)."""

    frame_of_reference_uid: str
    series_instance_uid: str
    sop_instance_uid: str = ""  # set for a multi-frame object, which is a volume on its own


@dataclass(frozen=True)
class SeriesPlan:
    """An accepted series: its slices in stacking order and the geometry of the ``[slice, row, column]`` stack."""

    key: SeriesKey
    slices: tuple[SliceRecord, ...]  # ascending along the slice normal
    geometry: VolumeGeometry  # acquisition array order; the volume is returned in canonical order
    notes: tuple[str, ...] = ()
    usable: ClassVar[bool] = True

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.path for s in self.slices))

    @property
    def modality(self) -> str:
        return self.slices[0].modality

    @property
    def canonical_geometry(self) -> VolumeGeometry:
        """The geometry of the assembled volume (axis 0 → S, 1 → P, 2 → L), known before decoding."""
        return canonical_geometry(self.geometry)


@dataclass(frozen=True)
class SeriesRejection:
    """A series that is no usable volume: one reason code, a detail naming the problem, every file involved."""

    key: SeriesKey
    reason: Reason
    detail: str
    files: tuple[str, ...]
    notes: tuple[str, ...] = ()
    usable: ClassVar[bool] = False

    @property
    def explanation(self) -> str:
        return EXPLANATIONS[self.reason]


def group_key(record: SliceRecord) -> SeriesKey:
    multi = record.frame is not None or record.number_of_frames > 1
    return SeriesKey(
        record.frame_of_reference_uid, record.series_instance_uid, record.sop_instance_uid if multi else ""
    )


def plan_series(records: Iterable[SliceRecord], params: PlanParams | None = None) -> list[SeriesPlan | SeriesRejection]:
    """Group ``records`` into series and plan each (sorted by key, so the result does not depend on file order)."""
    groups: dict[SeriesKey, list[SliceRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return [plan_group(key, groups[key], params or PlanParams()) for key in sorted(groups)]


def plan_group(key: SeriesKey, records: Sequence[SliceRecord], params: PlanParams) -> SeriesPlan | SeriesRejection:
    """One series' verdict: a :class:`SeriesPlan`, or the first failing check as a :class:`SeriesRejection`."""
    records = sorted(records, key=lambda r: (r.path, -1 if r.frame is None else r.frame))
    files = tuple(dict.fromkeys(r.path for r in records))
    notes: list[str] = []
    try:
        slices = drop_repeated_copies(records, notes)
        check_multi_frame(slices)
        check_grayscale(slices)
        slices = drop_localizers(slices, notes)
        check_geometry_present(slices)
        orientation = common_orientation(slices, params)
        check_same_matrix(slices)
        spacing = common_pixel_spacing(slices, params)
        check_rescale(slices, notes)
        if len(slices) < params.min_slices:
            raise Rejection(
                Reason.SERIES_TOO_FEW_SLICES,
                f"{len(slices)} slice{'s' * (len(slices) != 1)}, a volume needs at least {params.min_slices}",
            )
        check_header_tilt(slices, params)
        ordered, step = order_and_space(slices, orientation, params)
    except Rejection as rej:
        return SeriesRejection(key, rej.reason, rej.detail, files, tuple(notes))
    first = ordered[0]
    geometry = slice_stack_geometry(
        orientation.ravel(),
        first.position,  # type: ignore[arg-type]
        step,
        spacing,
        (len(ordered), first.rows, first.columns),
        key.frame_of_reference_uid,
    )
    return SeriesPlan(key, tuple(ordered), geometry, tuple(notes))
