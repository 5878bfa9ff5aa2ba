"""Read DICOM Segmentation (SEG) objects and turn them into masks aligned with the model input.

Foundation for a future ``segmentation`` task; classification never imports this
module (highdicom takes seconds to import, and ingest workers must start fast).
highdicom does the DICOM work: segment descriptions, finding the frames that
belong to a source image by its SOPInstanceUID, unpacking 1-bit frames. This
module adds FedRad's policy:

* SEGs are matched to scanned images by the source SOPInstanceUID they reference;
* every problem (unreadable SEG, missing source image, image without a SEG,
  unknown or missing segment label, matrix mismatch, two SEGs for one image) is
  a :class:`SegProblem` naming the file and what to do, never an exception;
* masks get exactly the geometry :func:`~shared.imaging.planar.preprocess_image`
  gives the image (same padding, same resampler), then a 0.5 threshold, so mask
  and model input line up pixel for pixel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from shared.imaging.planar import pad_to_square, resample
from shared.imaging.scan import FileRecord

MASK_THRESHOLD = 0.5  # an output pixel is in the mask when at least half of its area is


class SegProblemKind(str, Enum):
    """Stable codes for SEG problems (for reports and scripts)."""

    UNREADABLE_SEG = "unreadable-seg"
    SOURCE_MISSING = "seg-source-missing"
    IMAGE_WITHOUT_SEG = "image-without-seg"
    UNKNOWN_SEGMENT = "unknown-segment"
    MISSING_SEGMENT = "missing-segment"
    GEOMETRY_MISMATCH = "geometry-mismatch"
    DUPLICATE_SEG = "duplicate-seg"
    # masks from a manifest of PNG/NIfTI files (shared/imaging/mask_manifest.py)
    MASK_FILE_MISSING = "mask-file-missing"
    UNREADABLE_MASK = "unreadable-mask"
    MASK_GEOMETRY_MISMATCH = "mask-geometry-mismatch"
    MASK_KEY_NOT_FOUND = "mask-key-not-found"
    UNKNOWN_MASK_LABEL = "unknown-mask-label"
    MISSING_MASK_LABEL = "missing-mask-label"
    IMAGE_WITHOUT_MASK = "image-without-mask"


WHAT_TO_DO: dict[SegProblemKind, str] = {
    SegProblemKind.UNREADABLE_SEG: "Not a DICOM Segmentation highdicom can read (truncated, corrupt or another "
    "object); none of its masks are used. Re-export it from the annotation tool.",
    SegProblemKind.SOURCE_MISSING: "The SEG annotates an image that is not among the site's usable images; export "
    "that image too (or check why it was rejected), or remove the SEG.",
    SegProblemKind.IMAGE_WITHOUT_SEG: "No SEG references this image, so it is left out of segmentation training; "
    "annotate it, or ignore this if it was not meant to be annotated.",
    SegProblemKind.UNKNOWN_SEGMENT: "A segment label is not in the task's label list, so that segment is ignored; "
    "rename the segment in the annotation tool or add the label to the task.",
    SegProblemKind.MISSING_SEGMENT: "The SEG does not describe every task label, so 'absent' cannot be told from "
    "'not annotated' and the image is left out; add the segment (empty if there is nothing to mark).",
    SegProblemKind.GEOMETRY_MISMATCH: "The SEG's frames do not match its source image's Rows/Columns (it was drawn on "
    "another copy of the image), so its masks are not used; re-create the SEG on the exported image.",
    SegProblemKind.DUPLICATE_SEG: "Another SEG already annotates this image; the first one (by path) is used. "
    "Remove or merge the extra SEG.",
    SegProblemKind.MASK_FILE_MISSING: "The mask manifest names a file that does not exist (paths are relative to the "
    "manifest CSV); fix the 'mask' cell or copy the file there.",
    SegProblemKind.UNREADABLE_MASK: "The mask file is not a PNG or NIfTI (.nii/.nii.gz) 2D image FedRad can read; "
    "re-export it as a single-slice PNG (nonzero = inside) or NIfTI.",
    SegProblemKind.MASK_GEOMETRY_MISMATCH: "The mask is not the image's native Rows x Columns (drawn on a resized or "
    "cropped copy?), so it is not used; re-export the mask at the DICOM image's size.",
    SegProblemKind.MASK_KEY_NOT_FOUND: "No usable image has this key (wrong value, image not exported, or rejected "
    "by the scan); fix the key cell or export the image.",
    SegProblemKind.UNKNOWN_MASK_LABEL: "The manifest row's 'label' is not one of the task's segment labels, so the "
    "mask is ignored; rename it or add the label to the task.",
    SegProblemKind.MISSING_MASK_LABEL: "The image has masks for some task labels but not all, so 'absent' cannot be "
    "told from 'not annotated' and the image is left out; add a row (an empty mask if there is nothing to mark).",
    SegProblemKind.IMAGE_WITHOUT_MASK: "The mask manifest has no row for this image, so it is left out of "
    "segmentation training; annotate it, or ignore this if it was not meant to be annotated.",
}


@dataclass(frozen=True)
class SegProblem:
    """One problem with one file: the SEG, or the image for ``image-without-seg``."""

    kind: SegProblemKind
    path: str  # relative to the data folder when the file is inside it
    detail: str

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "path": self.path, "detail": self.detail, "what_to_do": WHAT_TO_DO[self.kind]}


class SegReadError(Exception):
    """A SEG file that cannot be used at all; :func:`match_segmentations` turns it into a problem."""


@dataclass
class SegFile:
    """One readable SEG: its segment labels and, per referenced source image, one native-size mask per label."""

    path: str
    sop_instance_uid: str
    rows: int
    columns: int
    labels: dict[int, str]  # segment number → SegmentLabel
    masks: dict[str, dict[str, np.ndarray]]  # source SOPInstanceUID → SegmentLabel → bool (rows, columns)


def _drop_incomplete_pixel_measures(ds: pydicom.Dataset) -> None:
    """Remove Pixel Measures items without SliceThickness before highdicom parses the SEG.

    highdicom 0.28 writes exactly such items for projection images (SliceThickness is only
    required with a Frame of Reference) but its reader rejects them. FedRad never uses the
    SEG's spacing: frames correspond to source pixels, whose geometry is checked instead.
    """
    groups = [*(ds.get("SharedFunctionalGroupsSequence") or []), *(ds.get("PerFrameFunctionalGroupsSequence") or [])]
    for group in groups:
        measures = group.get("PixelMeasuresSequence")
        if measures and not all("SliceThickness" in item for item in measures):
            del group.PixelMeasuresSequence


def read_segmentation(path: Path, name: str | None = None) -> SegFile:
    """Read one SEG file into a :class:`SegFile`; raises :class:`SegReadError` if it cannot be used.

    Source images the SEG references but has no frames for (a producer may omit empty
    frames) get all-zero masks: being referenced means they were segmented.
    """
    name = name or str(path)
    try:
        ds = pydicom.dcmread(path)
        _drop_incomplete_pixel_measures(ds)
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        numbers = list(seg.segment_numbers)
        labels = {int(d.segment_number): str(d.segment_label) for d in seg.SegmentSequence}
        labels = {n: labels[n] for n in numbers}  # a LABELMAP's background segment is not a segment
        uids = list(dict.fromkeys(sop for _, _, sop in seg.get_source_image_uids()))
        if not uids:
            raise SegReadError("the SEG references no source image")
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, assert_missing_frames_are_empty=True)
    except SegReadError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom, highdicom or a pixel decoder: any failure makes the file unusable
        raise SegReadError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    masks: dict[str, dict[str, np.ndarray]] = {}
    for i, uid in enumerate(uids):
        per_label: dict[str, np.ndarray] = {}
        for j, number in enumerate(numbers):
            label = labels[number]
            plane = pixels[i, :, :, j] >= 0.5  # BINARY is 0/1; FRACTIONAL comes rescaled to [0, 1]
            per_label[label] = per_label[label] | plane if label in per_label else plane  # same label twice: union
        masks[uid] = per_label
    return SegFile(name, str(seg.SOPInstanceUID), int(seg.Rows), int(seg.Columns), labels, masks)


def align_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """A native-size mask → (image_size, image_size) bool, on the grid of ``preprocess_image``'s output.

    Same geometry as the image: centred on a square canvas (filled with 0, i.e. outside
    the mask), then the same area resampler (box filter when shrinking, bilinear when
    enlarging); the covered fraction is thresholded at :data:`MASK_THRESHOLD`.
    """
    coverage = resample(pad_to_square(np.asarray(mask, dtype=np.float32), 0.0), image_size)
    return coverage >= MASK_THRESHOLD


@dataclass
class SegReport:
    """Masks ready for training, keyed by image SOPInstanceUID, plus every problem found."""

    labels: list[str]
    image_size: int
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # (len(labels), S, S) bool, channels in label order
    image_paths: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID → image path
    problems: list[SegProblem] = field(default_factory=list)

    def to_json(self) -> dict:
        by_kind = Counter(p.kind for p in self.problems)
        return {
            "labels": self.labels,
            "image_size": self.image_size,
            "images_with_masks": len(self.masks),
            "problems": [p.to_dict() for p in self.problems],
            "problems_by_kind": {
                kind.value: {"count": n, "what_to_do": WHAT_TO_DO[kind]} for kind, n in by_kind.most_common()
            },
        }


def _name(path: Path, data_dir: Path | None) -> str:
    if data_dir is not None:
        try:
            return Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def match_segmentations(
    images: Iterable[FileRecord],
    seg_paths: Sequence[Path],
    labels: Sequence[str],
    image_size: int,
    data_dir: Path | None = None,
) -> SegReport:
    """Pair SEGs with scanned images by source SOPInstanceUID and align their masks; never raises for file content.

    ``images`` are usable scan records (``ScanResult.usable``; records with Modality SEG are
    skipped), ``labels`` the task's segment labels (matched case-insensitively), ``data_dir``
    only shortens paths in the report. SEGs are read in path order; the first SEG for an image wins.
    """
    report = SegReport(labels=list(labels), image_size=image_size)
    wanted = {label.strip().casefold(): i for i, label in enumerate(labels)}
    by_uid = {r.header.sop_instance_uid: r for r in images if r.usable and r.header.modality.upper() != "SEG"}
    by_uid.pop("", None)
    covered: dict[str, str] = {}  # image SOPInstanceUID → the SEG that annotated it (or tried to)
    for seg_path in sorted(seg_paths, key=lambda p: _name(p, data_dir)):
        name = _name(seg_path, data_dir)
        try:
            seg = read_segmentation(Path(seg_path), name)
        except SegReadError as exc:
            report.problems.append(SegProblem(SegProblemKind.UNREADABLE_SEG, name, str(exc)))
            continue
        channel: dict[str, int] = {}  # SegmentLabel → index in ``labels``
        for label in dict.fromkeys(seg.labels.values()):
            if label.strip().casefold() in wanted:
                channel[label] = wanted[label.strip().casefold()]
            else:
                report.problems.append(
                    SegProblem(SegProblemKind.UNKNOWN_SEGMENT, name, f"segment {label!r} is not one of {list(labels)}")
                )
        missing = [label for i, label in enumerate(labels) if i not in channel.values()]
        if missing:
            report.problems.append(
                SegProblem(
                    SegProblemKind.MISSING_SEGMENT,
                    name,
                    f"no segment for {missing}; it has {sorted(set(seg.labels.values()))}",
                )
            )
        for uid, per_label in seg.masks.items():
            record = by_uid.get(uid)
            if record is None:
                report.problems.append(
                    SegProblem(
                        SegProblemKind.SOURCE_MISSING,
                        name,
                        f"source image SOPInstanceUID {uid} is not among the usable images",
                    )
                )
                continue
            if uid in covered:
                report.problems.append(
                    SegProblem(
                        SegProblemKind.DUPLICATE_SEG, name, f"{record.path} is already annotated by {covered[uid]}"
                    )
                )
                continue
            covered[uid] = name
            if (seg.rows, seg.columns) != (record.header.rows, record.header.columns):
                report.problems.append(
                    SegProblem(
                        SegProblemKind.GEOMETRY_MISMATCH,
                        name,
                        f"SEG frames are {seg.rows}x{seg.columns}, source image {record.path} is "
                        f"{record.header.rows}x{record.header.columns} (Rows x Columns)",
                    )
                )
                continue
            if missing:
                continue
            stack = np.zeros((len(labels), image_size, image_size), dtype=bool)
            for label, mask in per_label.items():
                if label in channel:
                    stack[channel[label]] |= align_mask(mask, image_size)
            report.masks[uid] = stack
            report.image_paths[uid] = record.path
    for uid, record in by_uid.items():
        if uid not in covered:
            report.problems.append(
                SegProblem(SegProblemKind.IMAGE_WITHOUT_SEG, record.path, f"no SEG references SOPInstanceUID {uid}")
            )
    return report


def seg_files(records: Iterable[FileRecord], data_dir: Path) -> list[Path]:
    """The SEG files among a scan's records (Modality SEG), usable or not.

    The scanner rejects every SEG as ``segmentation-object`` (labels, not an image to train on),
    but it keeps the header, which is enough to find it here.
    A SEG whose header cannot be parsed is not found; it is a rejected file of the scan.
    """
    return [Path(data_dir) / r.path for r in records if r.header.modality.upper() == "SEG"]
