"""Segmentation masks from a folder of PNG or NIfTI files, listed in a CSV keyed like the label manifest.

The secondary label path of issue 7 (DICOM SEG is the primary one): many sites
draw masks in tools that save PNG or NIfTI. The manifest (site.yaml ``masks:``)
has one row per image and segment: the join key column of the label CSV
(``key``: SOPInstanceUID, StudyInstanceUID, AccessionNumber or path, matched
with :mod:`shared.labels`' helpers), ``label`` (segment name) and ``mask`` (a
file path relative to the CSV). A mask must have the image's native
Rows x Columns; it then gets exactly the padding, resampling and threshold a
SEG mask gets (:func:`~shared.imaging.segmentation.align_mask`). Every problem
is a :class:`~shared.imaging.segmentation.SegProblem` in the same report, never
an exception; only an unreadable manifest itself is a :class:`ConfigError`.

Orientation: a PNG's pixel rows are the image rows. A NIfTI array is read as
(columns, rows), the ITK/3D Slicer voxel order for a 2D DICOM image, and
transposed; its affine is not used.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from shared.imaging.scan import FileRecord
from shared.imaging.segmentation import SegProblem, SegProblemKind, SegReport, align_mask
from shared.labels import normalise_key, read_csv_columns, record_key

LABEL_COLUMN, MASK_COLUMN = "label", "mask"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class MaskReadError(Exception):
    """A mask file that cannot be used; :func:`match_mask_manifest` turns it into a problem."""


def read_mask_file(path: Path) -> np.ndarray:
    """A PNG (nonzero = inside) or NIfTI 2D mask → bool (rows, columns); raises :class:`MaskReadError`."""
    name = Path(path).name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib  # only sites with NIfTI masks pay the import

            arr = np.asanyarray(nib.load(str(path)).dataobj)
            while arr.ndim > 2 and arr.shape[-1] == 1:
                arr = arr[..., 0]  # a single-slice volume
            if arr.ndim != 2:
                raise MaskReadError(f"NIfTI shape {arr.shape} is not a 2D slice or a single-slice volume")
            return np.asarray(arr).T != 0
        with Image.open(path) as img:
            if img.mode in ("P", "PA"):
                img = img.convert("RGBA")  # palette index 0 need not be black
            arr = np.asarray(img)
    except MaskReadError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # PIL or nibabel: any failure makes the file unusable
        raise MaskReadError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if arr.ndim == 3:  # colour: inside where any colour channel is set (alpha ignored)
        arr = arr[..., : 1 if arr.shape[-1] <= 2 else 3].any(axis=-1)
    return arr != 0


def read_mask_manifest(path: Path, key: str) -> list[tuple[int, str, str, str]]:
    """(line, key, label, mask path) per row; ConfigError naming the file if it cannot be read."""
    hint = f"A mask manifest needs the key column '{key}' (site.yaml 'key'), '{LABEL_COLUMN}' and '{MASK_COLUMN}'."
    rows = read_csv_columns(path, [key, LABEL_COLUMN, MASK_COLUMN], hint, what="mask manifest")
    return [(line, normalise_key(k, key), label, mask) for line, (k, label, mask) in rows]


def match_mask_manifest(
    records: Iterable[FileRecord], manifest: Path, key: str, labels: Sequence[str], image_size: int
) -> SegReport:
    """Masks per usable image from the manifest, aligned with the preprocessed images; never raises for file content.

    ``records`` are the scan's records (usable or not: a key that names a rejected image says so).
    A key that matches several images (e.g. a StudyInstanceUID) gives each of them the mask.
    Two rows for one image and label are united, as a SEG's repeated segment is.
    """
    manifest = Path(manifest)
    base = manifest.resolve().parent
    report = SegReport(labels=list(labels), image_size=image_size)
    wanted = {label.strip().casefold(): i for i, label in enumerate(labels)}
    usable: dict[str, list[FileRecord]] = defaultdict(list)
    rejected: dict[str, FileRecord] = {}
    for rec in records:
        if rec.header.modality.upper() == "SEG" or not (k := record_key(rec, key)):
            continue
        if rec.usable:
            usable[k].append(rec)
        else:
            rejected.setdefault(k, rec)
    where = manifest.name
    stacks: dict[str, np.ndarray] = {}  # image SOPInstanceUID → (labels, S, S)
    seen: dict[str, set[int]] = defaultdict(set)  # image SOPInstanceUID → channels with a mask
    broken: set[str] = set()  # images with a mask problem: left out, not half-annotated
    annotated: set[str] = set()
    for line, k, label, mask_cell in read_mask_manifest(manifest, key):
        row = f"{where} line {line}"
        recs = usable.get(k, [])
        if not recs:
            why = (
                f"image {rejected[k].path} was rejected: {rejected[k].reason}"
                if k in rejected
                else "no usable image has it"
            )
            report.problems.append(SegProblem(SegProblemKind.MASK_KEY_NOT_FOUND, row, f"{key} {k!r}: {why}"))
            continue
        annotated.update(r.header.sop_instance_uid for r in recs)
        channel = wanted.get(label.strip().casefold())
        if channel is None:
            report.problems.append(
                SegProblem(SegProblemKind.UNKNOWN_MASK_LABEL, row, f"label {label!r} is not one of {list(labels)}")
            )
            continue
        mask_path = base / mask_cell.replace("\\", "/")
        name = mask_path.relative_to(base).as_posix() if mask_path.is_relative_to(base) else str(mask_path)
        if not mask_cell or not mask_path.is_file():
            report.problems.append(SegProblem(SegProblemKind.MASK_FILE_MISSING, name, f"{row}: no file {mask_path}"))
            broken.update(r.header.sop_instance_uid for r in recs)
            continue
        try:
            native = read_mask_file(mask_path)
        except MaskReadError as exc:
            report.problems.append(SegProblem(SegProblemKind.UNREADABLE_MASK, name, f"{row}: {exc}"))
            broken.update(r.header.sop_instance_uid for r in recs)
            continue
        for rec in recs:
            uid = rec.header.sop_instance_uid
            if native.shape != (rec.header.rows, rec.header.columns):
                report.problems.append(
                    SegProblem(
                        SegProblemKind.MASK_GEOMETRY_MISMATCH,
                        name,
                        f"{row}: mask is {native.shape[0]}x{native.shape[1]}, image {rec.path} is "
                        f"{rec.header.rows}x{rec.header.columns} (Rows x Columns)",
                    )
                )
                broken.add(uid)
                continue
            stack = stacks.setdefault(uid, np.zeros((len(labels), image_size, image_size), dtype=bool))
            stack[channel] |= align_mask(native, image_size)
            seen[uid].add(channel)
            report.image_paths[uid] = rec.path
    paths = {r.header.sop_instance_uid: r.path for recs in usable.values() for r in recs}
    for uid in sorted(annotated - broken, key=paths.__getitem__):
        missing = [label for i, label in enumerate(labels) if i not in seen[uid]]
        if missing:
            report.problems.append(
                SegProblem(SegProblemKind.MISSING_MASK_LABEL, paths[uid], f"{where} has no mask for {missing}")
            )
            continue
        report.masks[uid] = stacks[uid]
    report.image_paths = {u: p for u, p in report.image_paths.items() if u in report.masks}
    for recs in usable.values():
        for rec in recs:
            if rec.header.sop_instance_uid not in annotated:
                report.problems.append(
                    SegProblem(
                        SegProblemKind.IMAGE_WITHOUT_MASK,
                        rec.path,
                        f"no row in {where} for {key} {record_key(rec, key)!r}",
                    )
                )
    return report
