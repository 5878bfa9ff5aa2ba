"""Pair a site's DICOM label objects (SEG, RTSTRUCT) with its CT/MR series, and read each onto its volume.

Which series a label object belongs to, in this order (its header decides, never its file name):

1. the series it references (SEG ReferencedSeriesSequence, RTSTRUCT RTReferencedSeriesSequence);
2. else the series whose slices are its source images (SEG derivation images, RTSTRUCT ContourImageSequence);
3. else (it references nothing) a series in its Frame of Reference on whose grid it lies, tried in order.

Objects are taken in path order; the first one for a series wins (``label-duplicate`` for the others).
An object that fits no series is ``label-series-missing``; a series without one is ``label-missing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom

from shared.imaging.volume_labels import (
    Kind,
    LabelFileError,
    LabelReferences,
    SeriesTarget,
    VolumeLabelProblem,
    VolumeLabelReport,
    VolumeLabels,
    display_name,
)
from shared.imaging.volume_labels_rtstruct import rtstruct_labels, rtstruct_references
from shared.imaging.volume_labels_seg import seg_labels, seg_references

LABEL_MODALITIES = ("SEG", "RTSTRUCT")


def read_label_references(path: Path) -> LabelReferences:
    """What a SEG or RTSTRUCT file references, from its header; :class:`LabelFileError` otherwise."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        modality = str(ds.get("Modality", "")).upper()
        if modality == "SEG":
            return seg_references(ds)
        if modality == "RTSTRUCT":
            return rtstruct_references(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom: any failure makes the file unusable
        raise LabelFileError(Kind.UNREADABLE, f"not a readable DICOM file: {type(exc).__name__}: {exc}"[:300]) from None
    raise LabelFileError(Kind.UNREADABLE, f"Modality {modality!r} is not a label object (SEG or RTSTRUCT)")


def read_volume_labels(
    path: Path, target: SeriesTarget, labels: Sequence[str], name: str | None = None, modality: str = ""
) -> VolumeLabels:
    """A SEG or RTSTRUCT at ``path`` on ``target``'s grid (the modality is read from the file unless given)."""
    name = name or str(path)
    if not modality:
        try:
            modality = read_label_references(Path(path)).modality
        except LabelFileError as exc:
            return VolumeLabels(tuple(labels), name).fail(exc.kind, exc.detail, target.series_instance_uid)
    reader = seg_labels if modality == "SEG" else rtstruct_labels
    return reader(Path(path), target, labels, name)


def candidate_targets(refs: LabelReferences, targets: Sequence[SeriesTarget]) -> list[SeriesTarget]:
    """The series a label object may belong to, best first (module docstring)."""
    named = [t for t in targets if refs.refers_to(t)]
    if named or refs.series_uids or refs.sop_uids:
        return named
    return [t for t in targets if t.frame_of_reference_uid and t.frame_of_reference_uid in refs.frame_of_reference_uids]


def match_volume_labels(
    targets: Sequence[SeriesTarget],
    label_paths: Iterable[Path],
    labels: Sequence[str],
    data_dir: Path | None = None,
) -> VolumeLabelReport:
    """Label maps for ``targets`` (keyed by SeriesInstanceUID) from SEG/RTSTRUCT files; never raises for content."""
    report = VolumeLabelReport(tuple(labels))
    for path in sorted(label_paths, key=lambda p: display_name(p, data_dir)):
        name = display_name(path, data_dir)
        try:
            refs = read_label_references(Path(path))
        except LabelFileError as exc:
            report.problems.append(VolumeLabelProblem(exc.kind, name, exc.detail))
            continue
        candidates = candidate_targets(refs, targets)
        if not candidates:
            if refs.series_uids:
                detail = f"references series {sorted(refs.series_uids)}"
            elif refs.sop_uids:
                detail = f"references {len(refs.sop_uids)} images that are slices of no usable series"
            else:
                detail = f"references no series; no usable series is in its Frame of Reference {sorted(refs.frame_of_reference_uids)}"
            report.problems.append(VolumeLabelProblem(Kind.SERIES_MISSING, name, f"{detail}"))
            continue
        first: VolumeLabels | None = None
        for target in candidates:
            uid = target.series_instance_uid
            if uid in report.results:
                if refs.refers_to(target):
                    report.problems.append(
                        VolumeLabelProblem(
                            Kind.DUPLICATE, name, f"already labelled by {report.results[uid].source}", uid
                        )
                    )
                    break
                continue
            result = read_volume_labels(Path(path), target, labels, name, refs.modality)
            first = first or result
            if result.ok or refs.refers_to(target):
                report.results[uid] = result
                report.problems.extend(result.problems)
                break
        else:
            if first is None:
                detail = "every series in its Frame of Reference is already labelled"
                report.problems.append(VolumeLabelProblem(Kind.DUPLICATE, name, detail))
            else:  # a Frame-of-Reference-only object that fits none of the candidates: say why for the first
                report.problems.extend(first.problems)
    for target in targets:
        if target.series_instance_uid not in report.results:
            report.problems.append(
                VolumeLabelProblem(
                    Kind.MISSING,
                    target.folder or target.series_instance_uid,
                    "no SEG or RTSTRUCT references this series",
                    target.series_instance_uid,
                )
            )
    return report


def volume_label_files(records: Iterable, data_dir: Path) -> list[Path]:
    """The SEG and RTSTRUCT files among a scan's records (usable or not: the scan rejects them as images)."""
    return [Path(data_dir) / r.path for r in records if r.header.modality.upper() in LABEL_MODALITIES]
