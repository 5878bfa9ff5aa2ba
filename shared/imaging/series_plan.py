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

Tolerances (:class:`PlanParams`): a step between slices is regular within ``max(position_tolerance_mm,
spacing_tolerance × spacing)`` of the spacing (0.05 mm or 2 %: DICOM positions are decimal strings, often rounded
to 0.01 mm; the spacing is the mean of the steps near the median step); a step that is a whole multiple of the
spacing within that tolerance is a gap of missing slices; two slices closer than ``position_tolerance_mm`` share a
position; directions agree within
``orientation_tolerance`` per direction cosine; a tilt (GantryDetectorTilt, or the angle between the slice step and
the normal) up to ``max_tilt_degrees`` is accepted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from shared.imaging.reasons import EXPLANATIONS, Reason, Rejection
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


@dataclass(frozen=True)
class PlanParams:
    """What makes a stack of slices a volume (module docstring: tolerances)."""

    min_slices: int = 8  # fewer is a key image or partial export, not a volume a 3D model can use
    spacing_tolerance: float = 0.02  # fraction of the slice spacing
    position_tolerance_mm: float = 0.05  # absolute floor, for rounded DICOM decimal strings
    orientation_tolerance: float = 1e-3  # per direction cosine (about 0.06°)
    pixel_spacing_tolerance_mm: float = 1e-3
    max_tilt_degrees: float = 0.1

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ValueError("a volume needs at least 2 slices: its spacing comes from their positions")
        if min(self.spacing_tolerance, self.position_tolerance_mm, self.orientation_tolerance) < 0:
            raise ValueError("tolerances are non-negative")


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
        slices = _drop_repeated_copies(records, notes)
        _check_multi_frame(slices)
        _check_grayscale(slices)
        slices = _drop_localizers(slices, notes)
        _check_geometry_present(slices)
        orientation = _common_orientation(slices, params)
        _check_same(slices, lambda r: (r.rows, r.columns), "matrix size", _fmt_matrix, Reason.SERIES_MIXED_MATRIX)
        spacing = _common_pixel_spacing(slices, params)
        _check_rescale(slices, notes)
        if len(slices) < params.min_slices:
            raise Rejection(
                Reason.SERIES_TOO_FEW_SLICES,
                f"{len(slices)} slice{'s' * (len(slices) != 1)}, a volume needs at least {params.min_slices}",
            )
        _check_header_tilt(slices, params)
        ordered, step = _order_and_space(slices, orientation, params)
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


# ---- the checks, in plan_group's order ------------------------------------------------------------------------


def _some(labels: Sequence[str], limit: int = 3) -> str:
    """A short list of names for a detail: the first ``limit`` and how many more."""
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _point(p: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in p) + ")"


def _drop_repeated_copies(records: list[SliceRecord], notes: list[str]) -> list[SliceRecord]:
    seen: set[tuple[str, int | None]] = set()
    kept, dropped = [], []
    for r in records:
        ident = (r.sop_instance_uid, r.frame)
        if r.sop_instance_uid and ident in seen:
            dropped.append(r.label)
            continue
        seen.add(ident)
        kept.append(r)
    if dropped:
        notes.append(
            f"dropped {len(dropped)} repeated copy(ies) of an SOP instance already in the series: {_some(dropped)}"
        )
    return kept


def _check_multi_frame(slices: list[SliceRecord]) -> None:
    bad = [r for r in slices if r.unsupported]
    if bad:
        raise Rejection(Reason.UNSUPPORTED_MULTI_FRAME, f"{bad[0].path}: {bad[0].unsupported}")


def _check_grayscale(slices: list[SliceRecord]) -> None:
    bad = [r.label for r in slices if r.samples_per_pixel != 1]
    if bad:
        raise Rejection(Reason.NOT_GRAYSCALE, f"{len(bad)} colour image(s) in the series: {_some(bad)}")


def _drop_localizers(slices: list[SliceRecord], notes: list[str]) -> list[SliceRecord]:
    scouts = [r.label for r in slices if r.is_localizer]
    kept = [r for r in slices if not r.is_localizer]
    if scouts and not kept:
        raise Rejection(Reason.SERIES_LOCALIZER, f"all {len(scouts)} image(s) are localizers (scouts): {_some(scouts)}")
    if scouts:
        notes.append(f"dropped {len(scouts)} localizer (scout) image(s): {_some(scouts)}")
    return kept


def _unit_orientation(record: SliceRecord) -> np.ndarray | None:
    """ImageOrientationPatient as two unit rows (row direction, column direction), or None if not orthonormal."""
    iop = np.asarray(record.orientation, dtype=np.float64).reshape(2, 3)
    norms = np.linalg.norm(iop, axis=1)
    if np.any(np.abs(norms - 1.0) > 0.01) or abs(float(iop[0] @ iop[1])) > 0.01:
        return None
    return iop / norms[:, None]


def _check_geometry_present(slices: list[SliceRecord]) -> None:
    problems = []
    for what, bad in (
        ("no ImagePositionPatient", [r.label for r in slices if r.position is None]),
        ("no ImageOrientationPatient", [r.label for r in slices if r.orientation is None]),
        (
            "an ImageOrientationPatient that is not two orthogonal unit vectors",
            [r.label for r in slices if r.orientation is not None and _unit_orientation(r) is None],
        ),
        (
            "no usable PixelSpacing",
            [r.label for r in slices if r.pixel_spacing is None or min(r.pixel_spacing) <= 0],
        ),
        ("no Rows/Columns", [r.label for r in slices if r.rows <= 0 or r.columns <= 0]),
    ):
        if bad:
            problems.append(f"{len(bad)} of {len(slices)} slice(s) have {what} ({_some(bad)})")
    if problems:
        raise Rejection(Reason.MISSING_GEOMETRY, "; ".join(problems))


def _clusters(
    slices: list[SliceRecord], value: Callable[[SliceRecord], Hashable], same: Callable[[object, object], bool]
) -> list[tuple[object, list[str]]]:
    """Slices grouped by ``value`` (two values join when ``same``), largest group first."""
    groups: list[tuple[object, list[str]]] = []
    for r in slices:
        v = value(r)
        for ref, members in groups:
            if same(ref, v):
                members.append(r.label)
                break
        else:
            groups.append((v, [r.label]))
    return sorted(groups, key=lambda g: -len(g[1]))


def _describe(groups: list[tuple[object, list[str]]], fmt: Callable[[object], str]) -> str:
    parts = [f"{fmt(groups[0][0])} in {len(groups[0][1])} slice(s)"]
    parts += [f"{fmt(v)} in {len(m)} ({_some(m)})" for v, m in groups[1:]]
    return "; ".join(parts)


def _common_orientation(slices: list[SliceRecord], params: PlanParams) -> np.ndarray:
    tol = params.orientation_tolerance
    groups = _clusters(
        slices,
        lambda r: tuple(_unit_orientation(r).ravel()),  # type: ignore[union-attr]
        lambda a, b: bool(np.max(np.abs(np.subtract(a, b))) <= tol),
    )
    if len(groups) > 1:
        fmt = lambda v: "[" + ", ".join(f"{x:.3f}" for x in v) + "]"  # noqa: E731
        raise Rejection(
            Reason.SERIES_MIXED_ORIENTATION,
            f"{len(groups)} orientations (ImageOrientationPatient): {_describe(groups, fmt)}",
        )
    return np.asarray(groups[0][0]).reshape(2, 3)


def _fmt_matrix(v: object) -> str:
    rows, cols = v  # type: ignore[misc]
    return f"{rows}x{cols}"


def _check_same(
    slices: list[SliceRecord], value: Callable[[SliceRecord], Hashable], what: str, fmt, reason: Reason
) -> None:
    groups = _clusters(slices, value, lambda a, b: a == b)
    if len(groups) > 1:
        raise Rejection(reason, f"{len(groups)} {what}s: {_describe(groups, fmt)}")


def _common_pixel_spacing(slices: list[SliceRecord], params: PlanParams) -> tuple[float, float]:
    tol = params.pixel_spacing_tolerance_mm
    groups = _clusters(slices, lambda r: r.pixel_spacing, lambda a, b: bool(np.max(np.abs(np.subtract(a, b))) <= tol))
    if len(groups) > 1:
        fmt = lambda v: f"{v[0]:g} x {v[1]:g} mm"  # noqa: E731
        raise Rejection(Reason.SERIES_MIXED_PIXEL_SPACING, f"{len(groups)} pixel spacings: {_describe(groups, fmt)}")
    return groups[0][0]  # type: ignore[return-value]


def _check_rescale(slices: list[SliceRecord], notes: list[str]) -> None:
    bad = [
        r.label
        for r in slices
        if not r.has_modality_lut and (r.rescale_slope is None or r.rescale_intercept is None or r.rescale_slope == 0)
    ]
    if bad:
        raise Rejection(
            Reason.SERIES_RESCALE, f"{len(bad)} slice(s) have a malformed or zero RescaleSlope/Intercept: {_some(bad)}"
        )
    kinds = Counter(r.rescale_type for r in slices if r.rescale_type)
    if len(kinds) > 1:
        listed = ", ".join(f"{k} ({n} slices)" for k, n in kinds.most_common())
        raise Rejection(Reason.SERIES_RESCALE, f"RescaleType differs between slices (mixed units): {listed}")
    linear = {(r.rescale_slope, r.rescale_intercept) for r in slices if not r.has_modality_lut}
    if len(linear) > 1 or (linear and any(r.has_modality_lut for r in slices)):
        slopes = sorted({s for s, _ in linear})
        intercepts = sorted({i for _, i in linear})
        notes.append(
            f"rescale differs between slices (slopes {slopes[0]:g} to {slopes[-1]:g}, intercepts {intercepts[0]:g} "
            f"to {intercepts[-1]:g}); each slice's own is applied"
        )


def _check_header_tilt(slices: list[SliceRecord], params: PlanParams) -> None:
    tilted = [r for r in slices if r.gantry_tilt is not None and abs(r.gantry_tilt) > params.max_tilt_degrees]
    if tilted:
        raise Rejection(
            Reason.SERIES_GANTRY_TILT,
            f"GantryDetectorTilt {tilted[0].gantry_tilt:g}° in {len(tilted)} slice(s) ({_some([r.label for r in tilted])}); "
            f"at most {params.max_tilt_degrees:g}° is accepted",
        )


def _order_and_space(
    slices: list[SliceRecord], orientation: np.ndarray, params: PlanParams
) -> tuple[list[SliceRecord], np.ndarray]:
    """Slices ordered along the normal, and the step vector between them; rejects duplicates, gaps, uneven steps
    and tilted stacks."""
    normal = np.cross(orientation[0], orientation[1])
    positions = np.array([r.position for r in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = [slices[i] for i in order]
    positions, along = positions[order], along[order]

    steps = np.diff(along)
    _check_duplicates(ordered, positions, steps, params)
    median = float(np.median(steps))
    near = steps[np.abs(steps - median) <= max(params.position_tolerance_mm, params.spacing_tolerance * median)]
    base = float(near.mean())  # the spacing: steps that alternate with rounding average out
    tol = max(params.position_tolerance_mm, params.spacing_tolerance * base)
    _check_steps(ordered, positions, steps, base, tol)

    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step))))))
    if tilt > params.max_tilt_degrees:
        raise Rejection(
            Reason.SERIES_GANTRY_TILT,
            f"the slices step {np.linalg.norm(step):.2f} mm along a direction {tilt:.2f}° from the slice normal "
            f"(sheared stack, gantry tilt); at most {params.max_tilt_degrees:g}° is accepted",
        )
    residual = positions - (positions[0] + np.outer(np.arange(len(ordered)), step))
    in_plane = np.linalg.norm(residual - np.outer(residual @ normal, normal), axis=1)
    worst = int(np.argmax(in_plane))
    if in_plane[worst] > tol:
        raise Rejection(
            Reason.SERIES_GANTRY_TILT,
            f"{ordered[worst].label} at {_point(positions[worst])} is displaced {in_plane[worst]:.2f} mm in-plane from "
            f"the line through the other slices (the step between slices is not along the normal)",
        )
    return ordered, step


def _check_duplicates(ordered: list[SliceRecord], positions: np.ndarray, steps: np.ndarray, params: PlanParams) -> None:
    runs: list[list[int]] = []  # indices of slices sharing one position
    for i, s in enumerate(steps):
        if s > params.position_tolerance_mm:
            continue
        if runs and runs[-1][-1] == i:
            runs[-1].append(i + 1)
        else:
            runs.append([i, i + 1])
    if not runs:
        return
    shown = "; ".join(f"{_point(positions[m[0]])}: {_some([ordered[j].label for j in m], 4)}" for m in runs[:3])
    more = f" and {len(runs) - 3} more" if len(runs) > 3 else ""
    sizes = {len(m) for m in runs}
    stacked = len(sizes) == 1 and sum(len(m) for m in runs) == len(ordered)  # every position holds k images
    hint = f"; every position holds {sizes.pop()} images: several stacks in one series" if stacked else ""
    raise Rejection(
        Reason.SERIES_DUPLICATE_POSITION,
        f"{len(runs)} slice position(s) hold more than one image, each a different SOP instance or frame, so "
        f"different content (repeated copies of one SOP instance are dropped instead){hint}: {shown}{more}",
    )


def _check_steps(ordered: list[SliceRecord], positions: np.ndarray, steps: np.ndarray, base: float, tol: float) -> None:
    gaps, uneven = [], []
    for i, s in enumerate(steps):
        if abs(s - base) <= tol:
            continue
        k = int(round(s / base))
        if k >= 2 and abs(s - k * base) <= tol:
            missing = [positions[i] + (positions[i + 1] - positions[i]) * j / k for j in range(1, k)]
            gaps.append((i, missing))
        else:
            uneven.append(i)
    if uneven:
        shown = "; ".join(
            f"{steps[i]:.2f} mm between {ordered[i].label} and {ordered[i + 1].label}" for i in uneven[:3]
        )
        more = f" and {len(uneven) - 3} more" if len(uneven) > 3 else ""
        raise Rejection(
            Reason.SERIES_UNEVEN_SPACING,
            f"slices are {base:.2f} mm apart (tolerance ±{tol:.2f} mm) except {shown}{more}",
        )
    if gaps:
        points = [p for _, missing in gaps for p in missing]
        where = ", ".join(_point(p) for p in points[:5]) + (f" and {len(points) - 5} more" if len(points) > 5 else "")
        first = gaps[0][0]
        raise Rejection(
            Reason.SERIES_MISSING_SLICES,
            f"{len(points)} slice(s) missing from a {base:.2f} mm stack, first between {ordered[first].label} and "
            f"{ordered[first + 1].label}; missing at LPS {where}",
        )
