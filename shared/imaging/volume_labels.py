"""Labels for CT/MR volumes: what every label source (DICOM SEG, RTSTRUCT, NIfTI) shares.

A label source is read onto a :class:`SeriesTarget`, the canonical grid of one series' volume
(:mod:`shared.imaging.volume_geometry`), and gives a :class:`VolumeLabels`: a ``uint8`` label map
of exactly that shape (0 background, ``i + 1`` for the task's ``labels[i]``), or ``None`` with the
problems that make it unusable. Problems are :class:`VolumeLabelProblem` (a stable code, the file,
a sentence), as :mod:`shared.imaging.segmentation` does for 2D masks; nothing in a file raises.

Policy shared by the sources (one place, so SEG, RTSTRUCT and NIfTI agree):

* **Names**: a task label matches a segment / ROI name case-insensitively (surrounding spaces
  ignored). No match is ``label-segment-missing``; two matches is ``label-segment-ambiguous`` (both
  make the series unusable: "absent" must not be guessed). Names that are not task labels are
  ignored and reported once (``label-segment-unknown``).
* **Overlap**: a voxel in several wanted segments gets the one **later in the task's label list**
  (the highest value). Order ``task.labels`` from container to contained (``[liver, tumour]``) so
  nested structures survive; the overlap is counted in :attr:`VolumeLabels.overlap_voxels`.
* **Placement**: never by frame, file or contour order; every piece is placed by its patient
  position and must land on the series' voxel grid within :data:`GRID_TOLERANCE` voxels.

The sources: :mod:`~shared.imaging.volume_labels_seg`, :mod:`~shared.imaging.volume_labels_rtstruct`,
:mod:`~shared.imaging.volume_labels_nifti` (with its manifest); :mod:`~shared.imaging.volume_labels_match`
pairs a site's SEG/RTSTRUCT files with its series; :mod:`~shared.imaging.volume_grid` places planes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from shared.imaging.volume_geometry import VolumeGeometry

AXIS_NAMES = ("S", "P", "L")  # what canonical array axes 0, 1, 2 grow towards, for messages
GRID_TOLERANCE = 0.1  # voxels: how far a label voxel centre may lie from the series' (float32 / DS rounding, not drift)


class VolumeLabelProblemKind(str, Enum):
    """Stable codes for volume label problems (reports and ``--json`` output)."""

    MISSING = "label-missing"
    UNREADABLE = "label-unreadable"
    FILE_MISSING = "label-file-missing"
    SERIES_MISSING = "label-series-missing"
    SERIES_MISMATCH = "label-series-mismatch"
    DUPLICATE = "label-duplicate"
    FRAME_OF_REFERENCE = "label-frame-of-reference"
    GEOMETRY_MISMATCH = "label-geometry-mismatch"
    SEGMENT_MISSING = "label-segment-missing"
    SEGMENT_AMBIGUOUS = "label-segment-ambiguous"
    SEGMENT_UNKNOWN = "label-segment-unknown"
    VALUE_UNKNOWN = "label-value-unknown"
    CONTOUR_OFF_SLICE = "label-contour-off-slice"
    CONTOUR_UNSUPPORTED = "label-contour-unsupported"


Kind = VolumeLabelProblemKind

WHAT_TO_DO: dict[Kind, str] = {
    Kind.MISSING: "No SEG, RTSTRUCT or manifest row labels this series, so it is left out of training; annotate it, "
    "or ignore this if it was not meant to be annotated.",
    Kind.UNREADABLE: "The label file cannot be read (truncated, corrupt, another kind of object, or values that are "
    "not integer labels); none of its labels are used. Re-export it from the annotation tool.",
    Kind.FILE_MISSING: "The volume mask manifest names a file that does not exist (paths are relative to the "
    "manifest); fix the 'mask' cell or copy the file there.",
    Kind.SERIES_MISSING: "The labels belong to a series that is not among the site's usable series (not exported, "
    "rejected by the scan, or a wrong key); export that series or fix the reference.",
    Kind.SERIES_MISMATCH: "The label object references another series than the one it was given for; pair it "
    "with the series it was drawn on.",
    Kind.DUPLICATE: "Another label object already labels this series; the first one (by path) is used. Remove or "
    "merge the extra one.",
    Kind.FRAME_OF_REFERENCE: "The labels are in another Frame of Reference than the series (drawn on another "
    "scan or a registered copy), so positions cannot be compared; re-create them on the exported series.",
    Kind.GEOMETRY_MISMATCH: "The labels do not lie on the series' voxel grid (another reconstruction, a resampled "
    "or cropped copy, or a shifted affine); nothing is interpolated, so re-export the labels on this series.",
    Kind.SEGMENT_MISSING: "A task label has no segment/ROI of that name, so 'absent' cannot be told from 'not "
    "annotated' and the series is left out; add it (empty if there is nothing to mark) or rename it.",
    Kind.SEGMENT_AMBIGUOUS: "Two segments/ROIs carry the same task label (names match ignoring case), so which one "
    "is meant cannot be told and the series is left out; rename or merge them.",
    Kind.SEGMENT_UNKNOWN: "A segment/ROI name is not one of the task's labels, so it is ignored; rename it or add "
    "the label to the task if it was meant.",
    Kind.VALUE_UNKNOWN: "The mask holds a value that the manifest maps to no name, so those voxels are treated as "
    "background; name the value in the manifest's 'labels' cell if it was meant.",
    Kind.CONTOUR_OFF_SLICE: "A contour does not lie on a slice of the series (between slices, outside it, or not "
    "planar), so the structure set was drawn on another series; re-create it on the exported series.",
    Kind.CONTOUR_UNSUPPORTED: "A wanted ROI has contours that do not enclose an area (POINT or OPEN_* types), so it "
    "cannot be filled; draw it as closed contours.",
}

# The series keeps its labels despite these (the problem concerns ignored content or another file).
NON_FATAL = frozenset({Kind.SEGMENT_UNKNOWN, Kind.VALUE_UNKNOWN, Kind.DUPLICATE, Kind.SERIES_MISSING})


@dataclass(frozen=True)
class VolumeLabelProblem:
    """One problem with one label file (or, for ``label-missing``, one series)."""

    kind: Kind
    path: str  # relative to the data folder when the file is inside it
    detail: str
    series_uid: str = ""

    @property
    def fatal(self) -> bool:
        return self.kind not in NON_FATAL

    def to_dict(self) -> dict:
        return {
            "kind": self.kind.value,
            "path": self.path,
            "series_uid": self.series_uid,
            "detail": self.detail,
            "what_to_do": WHAT_TO_DO[self.kind],
        }


class LabelFileError(Exception):
    """A label file that cannot be used at all; the readers turn it into one problem."""

    def __init__(self, kind: Kind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class SeriesTarget:
    """The series labels must fit: the canonical grid of its volume plus what identifies it.

    ``geometry`` is the volume reader's canonical geometry (axis 0 → S, 1 → P, 2 → L); ``folder`` is the
    series' folder relative to the data folder (a NIfTI manifest may name the series by it)."""

    geometry: VolumeGeometry
    series_instance_uid: str
    sop_instance_uids: frozenset[str] = frozenset()
    frame_of_reference_uid: str = ""
    folder: str = ""

    def __post_init__(self) -> None:
        if not self.frame_of_reference_uid:
            object.__setattr__(self, "frame_of_reference_uid", self.geometry.frame_of_reference_uid)
        object.__setattr__(self, "sop_instance_uids", frozenset(self.sop_instance_uids))


@dataclass
class VolumeLabels:
    """One series' labels from one source: the map on the target grid, or ``None`` and why."""

    labels: tuple[str, ...]  # value i + 1 is labels[i]
    source: str  # the label file (or manifest rows) it came from
    label_map: np.ndarray | None = None  # uint8, the target's shape
    problems: list[VolumeLabelProblem] = field(default_factory=list)
    overlap_voxels: int = 0  # voxels claimed by more than one wanted segment (the later label kept them)

    @property
    def ok(self) -> bool:
        return self.label_map is not None

    def fail(self, kind: Kind, detail: str, series_uid: str = "") -> VolumeLabels:
        """Record a problem (fatal ones drop the map) and return self, so readers can ``return result.fail(...)``."""
        problem = VolumeLabelProblem(kind, self.source, detail, series_uid)
        self.problems.append(problem)
        if problem.fatal:
            self.label_map = None
        return self


@dataclass
class VolumeLabelReport:
    """Labels for many series (keyed by SeriesInstanceUID) plus every problem found."""

    labels: tuple[str, ...]
    results: dict[str, VolumeLabels] = field(default_factory=dict)
    problems: list[VolumeLabelProblem] = field(default_factory=list)

    @property
    def label_maps(self) -> dict[str, np.ndarray]:
        """SeriesInstanceUID → usable label map."""
        return {uid: r.label_map for uid, r in self.results.items() if r.label_map is not None}

    def to_json(self) -> dict:
        by_kind = Counter(p.kind for p in self.problems)
        return {
            "labels": list(self.labels),
            "series_with_labels": len(self.label_maps),
            "problems": [p.to_dict() for p in self.problems],
            "problems_by_kind": {
                kind.value: {"count": n, "what_to_do": WHAT_TO_DO[kind]} for kind, n in by_kind.most_common()
            },
        }


def display_name(path: Path, data_dir: Path | None = None) -> str:
    """``path`` relative to ``data_dir`` when inside it (how reports name files), else as given."""
    if data_dir is not None:
        try:
            return Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def normalise_name(name: str) -> str:
    return str(name).strip().casefold()


def resolve_segments(
    names: Mapping[Hashable, str], labels: Sequence[str]
) -> tuple[dict[Hashable, int], list[tuple[Kind, str]]]:
    """Source segment ids (segment number, ROI number, mask value) → label value (1..K), plus problems.

    ``names`` maps each id to its name in the file. Returns ``(values, problems)`` where problems are
    ``(kind, detail)``: unknown names (non-fatal), task labels with no name or several names (fatal)."""
    by_name: dict[str, list[Hashable]] = {}
    for source_id, name in names.items():
        by_name.setdefault(normalise_name(name), []).append(source_id)
    values: dict[Hashable, int] = {}
    problems: list[tuple[Kind, str]] = []
    wanted = {normalise_name(label) for label in labels}
    for value, label in enumerate(labels, start=1):
        ids = by_name.get(normalise_name(label), [])
        if len(ids) > 1:
            shown = ", ".join(f"{names[i]!r} ({i})" for i in ids)
            problems.append((Kind.SEGMENT_AMBIGUOUS, f"task label {label!r} matches {len(ids)} segments: {shown}"))
        elif ids:
            values[ids[0]] = value
    missing = [label for label in labels if not by_name.get(normalise_name(label))]
    if missing:
        have = sorted({str(n) for n in names.values()})
        problems.append((Kind.SEGMENT_MISSING, f"no segment named {missing}; it has {have}"))
    unknown = sorted({str(n) for n in names.values() if normalise_name(n) not in wanted})
    if unknown:
        problems.append((Kind.SEGMENT_UNKNOWN, f"ignored {unknown}: not one of the task labels {list(labels)}"))
    return values, problems


def apply_segment_resolution(result: VolumeLabels, names: Mapping[Hashable, str], series_uid: str = "") -> dict:
    """:func:`resolve_segments` for ``result.labels``, its problems recorded on ``result``; the id → value map."""
    values, problems = resolve_segments(names, result.labels)
    for kind, detail in problems:
        result.fail(kind, detail, series_uid)
    return values


def paint(label_map: np.ndarray, index: tuple, mask: np.ndarray, value: int) -> int:
    """Write ``value`` where ``mask`` is set at ``label_map[index]``, the higher value winning; overlapped voxels.

    The overlap rule of the module docstring: ``np.maximum`` keeps the label later in the task's list."""
    region = label_map[index]
    mask = np.asarray(mask, dtype=bool)
    overlap = int(np.count_nonzero(mask & (region != 0) & (region != value)))
    label_map[index] = np.where(mask, np.maximum(region, value), region)
    return overlap


def fmt_mm(vector: Iterable[float]) -> str:
    """An LPS vector as people read it: ``L +5.00, P +0.00, S -1.25 mm``."""
    x, y, z = (round(float(v), 2) + 0.0 for v in vector)  # no "-0.00"
    return f"L {x:+.2f}, P {y:+.2f}, S {z:+.2f} mm"


@dataclass(frozen=True)
class LabelReferences:
    """What a label object says it was drawn on (read from its header, before any pixels or contours)."""

    modality: str  # SEG or RTSTRUCT
    series_uids: frozenset[str]
    sop_uids: frozenset[str]
    frame_of_reference_uids: frozenset[str]

    def refers_to(self, target: SeriesTarget) -> bool | None:
        """True / False when the object names (or names others than) the series; None when it names nothing.

        A referenced series decides; without one, referenced source images that are slices of the series do."""
        if self.series_uids:
            return target.series_instance_uid in self.series_uids
        if self.sop_uids and target.sop_instance_uids:
            return bool(self.sop_uids & target.sop_instance_uids)
        return None

    def check(self, target: SeriesTarget) -> None:
        """Raise :class:`LabelFileError` when the object was drawn on another series or Frame of Reference."""
        if self.refers_to(target) is False:
            what = f"series {sorted(self.series_uids)}" if self.series_uids else f"{len(self.sop_uids)} other images"
            raise LabelFileError(
                Kind.SERIES_MISMATCH, f"the {self.modality} references {what}, not series {target.series_instance_uid}"
            )
        ours = target.frame_of_reference_uid
        if ours and self.frame_of_reference_uids and ours not in self.frame_of_reference_uids:
            raise LabelFileError(
                Kind.FRAME_OF_REFERENCE,
                f"the {self.modality}'s FrameOfReferenceUID {sorted(self.frame_of_reference_uids)} is not the "
                f"series' {ours}",
            )
