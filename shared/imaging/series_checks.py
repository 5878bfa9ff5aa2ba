"""The checks that make a stack of slice headers a volume, one function each, in the order the planner runs them.

Each check raises the series' :class:`~shared.imaging.reasons.Rejection` (reason code plus a detail naming the
problem and the slices involved) or returns what the next step needs; the ones that drop slices append a note
instead. :mod:`shared.imaging.series_plan` runs them and documents the policy and the tolerances
(:class:`PlanParams`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.imaging.reasons import Reason, Rejection
from shared.imaging.slice_records import SliceRecord


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


def _some(labels: Sequence[str], limit: int = 3) -> str:
    """A short list of names for a detail: the first ``limit`` and how many more."""
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _point(p: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in p) + ")"


def drop_repeated_copies(records: list[SliceRecord], notes: list[str]) -> list[SliceRecord]:
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


def check_multi_frame(slices: list[SliceRecord]) -> None:
    bad = [r for r in slices if r.unsupported]
    if bad:
        raise Rejection(Reason.UNSUPPORTED_MULTI_FRAME, f"{bad[0].path}: {bad[0].unsupported}")


def check_grayscale(slices: list[SliceRecord]) -> None:
    bad = [r.label for r in slices if r.samples_per_pixel != 1]
    if bad:
        raise Rejection(Reason.NOT_GRAYSCALE, f"{len(bad)} colour image(s) in the series: {_some(bad)}")


def drop_localizers(slices: list[SliceRecord], notes: list[str]) -> list[SliceRecord]:
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


def check_geometry_present(slices: list[SliceRecord]) -> None:
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


def common_orientation(slices: list[SliceRecord], params: PlanParams) -> np.ndarray:
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


def check_same_matrix(slices: list[SliceRecord]) -> None:
    groups = _clusters(slices, lambda r: (r.rows, r.columns), lambda a, b: a == b)
    if len(groups) > 1:
        raise Rejection(Reason.SERIES_MIXED_MATRIX, f"{len(groups)} matrix sizes: {_describe(groups, _fmt_matrix)}")


def common_pixel_spacing(slices: list[SliceRecord], params: PlanParams) -> tuple[float, float]:
    tol = params.pixel_spacing_tolerance_mm
    groups = _clusters(slices, lambda r: r.pixel_spacing, lambda a, b: bool(np.max(np.abs(np.subtract(a, b))) <= tol))
    if len(groups) > 1:
        fmt = lambda v: f"{v[0]:g} x {v[1]:g} mm"  # noqa: E731
        raise Rejection(Reason.SERIES_MIXED_PIXEL_SPACING, f"{len(groups)} pixel spacings: {_describe(groups, fmt)}")
    return groups[0][0]  # type: ignore[return-value]


def check_rescale(slices: list[SliceRecord], notes: list[str]) -> None:
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


def check_header_tilt(slices: list[SliceRecord], params: PlanParams) -> None:
    tilted = [r for r in slices if r.gantry_tilt is not None and abs(r.gantry_tilt) > params.max_tilt_degrees]
    if tilted:
        raise Rejection(
            Reason.SERIES_GANTRY_TILT,
            f"GantryDetectorTilt {tilted[0].gantry_tilt:g}° in {len(tilted)} slice(s) ({_some([r.label for r in tilted])}); "
            f"at most {params.max_tilt_degrees:g}° is accepted",
        )


def order_and_space(
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
    base = float(near.mean()) if near.size else median  # the spacing: steps alternating with rounding average out
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
