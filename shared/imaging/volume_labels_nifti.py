"""NIfTI label volumes → a label map on a series' canonical grid, listed in a small CSV manifest.

The manifest (one row per mask file, read like the 2D mask manifest: any Excel CSV dialect):

* ``series``: the series' SeriesInstanceUID, or its folder relative to the data folder;
* ``mask``: the NIfTI file (.nii / .nii.gz), relative to the manifest;
* ``labels`` (optional column): which integer means which segment: ``liver;tumour`` (1 = liver,
  2 = tumour), ``5=liver;7=tumour`` (explicit values), a single name (any nonzero voxel is that
  segment, for one-file-per-structure exports), or empty (1..K are the task's labels in order).

Several rows may name one series (one file per structure); their maps are combined with the same
overlap rule as a SEG's segments. Geometry: nibabel's affine is RAS; it is turned into LPS (x and y
negated), the mask is reoriented to canonical order by axis permutations and flips only
(:func:`~shared.imaging.volume_geometry.to_canonical`, nothing interpolated) and must then have the
series' shape and voxel centres within :data:`~shared.imaging.volume_labels.GRID_TOLERANCE` voxels at
every corner; otherwise ``label-geometry-mismatch`` says by how much.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import ConfigError
from shared.imaging.volume_geometry import VolumeGeometry, to_canonical
from shared.imaging.volume_labels import (
    AXIS_NAMES,
    GRID_TOLERANCE,
    Kind,
    LabelFileError,
    SeriesTarget,
    VolumeLabelProblem,
    VolumeLabelReport,
    VolumeLabels,
    apply_segment_resolution,
    fmt_mm,
    paint,
)
from shared.labels import csv_header, read_csv_columns

SERIES_COLUMN, MASK_COLUMN, LABELS_COLUMN = "series", "mask", "labels"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ANY_NONZERO = -1  # value key of a single-name row: every nonzero voxel


@dataclass(frozen=True)
class VolumeMaskRow:
    """One manifest row: which series, which file, which value means which name (None: task labels by order)."""

    line: int
    series: str
    mask: str
    values: dict[int, str] | None


def parse_value_names(cell: str) -> dict[int, str] | None:
    """A ``labels`` cell → value → name (see module docstring); ValueError for a malformed cell."""
    parts = [p.strip() for p in re.split(r"[;|]", cell) if p.strip()]
    if not parts:
        return None
    if all("=" not in p for p in parts):
        return {ANY_NONZERO: parts[0]} if len(parts) == 1 else {i: name for i, name in enumerate(parts, start=1)}
    values: dict[int, str] = {}
    for part in parts:
        value, sep, name = (s.strip() for s in part.partition("="))
        if not sep or not value.isdigit() or int(value) == 0 or not name or int(value) in values:
            raise ValueError(f"{part!r} is not 'value=name' with a distinct value of 1 or more")
        values[int(value)] = name
    return values


def read_volume_mask_manifest(path: Path) -> list[VolumeMaskRow]:
    """The rows of a volume mask manifest; ConfigError naming the file, column or line."""
    hint = (
        f"A volume mask manifest needs the columns '{SERIES_COLUMN}' and '{MASK_COLUMN}' ('{LABELS_COLUMN}' optional)."
    )
    columns = [SERIES_COLUMN, MASK_COLUMN]
    if LABELS_COLUMN in csv_header(Path(path), "volume mask manifest"):
        columns.append(LABELS_COLUMN)
    rows = []
    for line, cells in read_csv_columns(Path(path), columns, hint, what="volume mask manifest"):
        try:
            values = parse_value_names(cells[2]) if len(cells) > 2 else None
        except ValueError as exc:
            raise ConfigError(f"{path}: line {line}: '{LABELS_COLUMN}' cell: {exc}") from None
        rows.append(VolumeMaskRow(line, cells[0].replace("\\", "/").strip("/"), cells[1], values))
    return rows


def read_nifti(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    """A NIfTI label volume (integer values) and its LPS geometry; :class:`LabelFileError` if unusable."""
    try:
        import nibabel as nib  # only sites with NIfTI labels pay the import

        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        header = image.header
        codes = (int(header["sform_code"]), int(header["qform_code"])) if "sform_code" in header else (1, 1)
        affine = np.asarray(image.affine, dtype=np.float64)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # nibabel: any failure makes the file unusable
        raise LabelFileError(
            Kind.UNREADABLE, f"not a NIfTI nibabel can read: {type(exc).__name__}: {exc}"[:300]
        ) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LabelFileError(Kind.UNREADABLE, f"shape {data.shape} is not one 3D label volume")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise LabelFileError(Kind.UNREADABLE, f"{data.dtype} values that are not integers (a probability map?)")
        data = data.astype(np.int32)  # integral floats (some tools save labels as float32)
    if data.size and data.min() < 0:
        raise LabelFileError(Kind.UNREADABLE, f"negative value {data.min()}: labels are 0 (background) or more")
    if codes == (0, 0):
        raise LabelFileError(Kind.GEOMETRY_MISMATCH, "no sform or qform: where its voxels are cannot be checked")
    return data, VolumeGeometry(data.shape, RAS_TO_LPS @ affine)


def present_values(array: np.ndarray) -> set[int]:
    """The nonzero values in a label volume, one slice at a time (no full-volume sort or int64 copy)."""
    found: set[int] = set()
    for plane in array:
        found.update(np.unique(plane).tolist())
    return found - {0}


def compare_geometry(mask: VolumeGeometry, series: VolumeGeometry) -> str | None:
    """None when two canonical grids agree voxel for voxel, else how they differ (shape, spacing, shift), in mm."""
    if mask.shape != series.shape:
        shown = " x ".join(f"{n} {a}" for n, a in zip(mask.shape, AXIS_NAMES, strict=True))
        return f"after reorientation the mask is {shown} voxels, the series " + " x ".join(
            f"{n} {a}" for n, a in zip(series.shape, AXIS_NAMES, strict=True)
        )
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in mask.shape], indexing="ij")).reshape(3, -1).T
    offsets = series.patient_to_index(mask.index_to_patient(corners)) - corners
    if np.max(np.abs(offsets)) <= GRID_TOLERANCE:
        return None
    parts = []
    for axis, (m, s) in enumerate(zip(mask.spacing, series.spacing, strict=True)):
        if abs(m - s) * max(mask.shape[axis] - 1, 1) > GRID_TOLERANCE * s:
            parts.append(f"spacing {m:.4g} vs {s:.4g} mm along {AXIS_NAMES[axis]}")
    cosines = np.sum(mask.directions * series.directions, axis=0)
    if np.min(cosines) < 1 - 1e-6:
        parts.append(f"axes differ by up to {np.degrees(np.arccos(np.clip(np.min(cosines), -1, 1))):.2f} degrees")
    shift = mask.affine[:3, 3] - series.affine[:3, 3]
    parts.append(f"first voxel centre differs by {np.linalg.norm(shift):.2f} mm ({fmt_mm(shift)})")
    worst = np.max(np.abs(offsets), axis=0)
    parts.append(
        "corners off by up to " + ", ".join(f"{w:.2f} voxels along {a}" for w, a in zip(worst, AXIS_NAMES, strict=True))
    )
    return "; ".join(parts)


def nifti_labels(
    path: Path,
    target: SeriesTarget,
    labels: Sequence[str],
    values: Mapping[int, str] | None = None,
    name: str | None = None,
) -> VolumeLabels:
    """One NIfTI label volume as a uint8 label map on ``target``'s grid (values in ``labels`` order).

    ``values``: file value → segment name (``{ANY_NONZERO: name}`` for a binary mask); None maps
    1..K to ``labels`` in order."""
    return _combine([(Path(path), values, name or str(path))], target, labels, name or str(path))


def _combine(
    files: Sequence[tuple[Path, Mapping[int, str] | None, str]],
    target: SeriesTarget,
    labels: Sequence[str],
    source: str,
) -> VolumeLabels:
    """The label map from one or more NIfTI files of one series (rows of the manifest)."""
    result = VolumeLabels(tuple(labels), source)
    uid = target.series_instance_uid
    arrays: list[tuple[np.ndarray, dict[int, str], str]] = []
    for path, values, name in files:
        try:
            data, geometry = read_nifti(path)
        except LabelFileError as exc:
            result.problems.append(VolumeLabelProblem(exc.kind, name, exc.detail, uid))
            continue
        canonical, canonical_geometry = to_canonical(data, geometry)
        difference = compare_geometry(canonical_geometry, target.geometry)
        if difference:
            result.problems.append(VolumeLabelProblem(Kind.GEOMETRY_MISMATCH, name, difference, uid))
            continue
        arrays.append((canonical, dict(values) if values else {i: n for i, n in enumerate(labels, start=1)}, name))
    if any(p.fatal for p in result.problems):
        return result
    names = {(i, value): n for i, (_, mapping, _) in enumerate(arrays) for value, n in mapping.items()}
    wanted = apply_segment_resolution(result, names, uid)
    if any(p.fatal for p in result.problems):
        return result
    label_map = np.zeros(target.geometry.shape, np.uint8)
    everything = (slice(None),) * 3
    for i, (array, mapping, name) in enumerate(arrays):
        present = present_values(array)
        if ANY_NONZERO in mapping:
            value = wanted.get((i, ANY_NONZERO))
            if value:
                result.overlap_voxels += paint(label_map, everything, array != 0, value)
            continue
        unnamed = sorted(present - set(mapping))
        if unnamed:
            result.problems.append(
                VolumeLabelProblem(Kind.VALUE_UNKNOWN, name, f"values {unnamed} have no name; named {mapping}", uid)
            )
        for (j, value), label_value in sorted(wanted.items(), key=lambda item: item[1]):
            if j == i and value in present:
                result.overlap_voxels += paint(label_map, everything, array == value, label_value)
    result.label_map = label_map
    return result


def match_volume_mask_manifest(
    targets: Sequence[SeriesTarget], manifest: Path, labels: Sequence[str]
) -> VolumeLabelReport:
    """Label maps per series from a volume mask manifest; never raises for file content (ConfigError for the CSV).

    Rows name a series by SeriesInstanceUID or by folder; rows of one series are combined. A row whose
    series is not among ``targets`` is ``label-series-missing``; a target with no row is ``label-missing``."""
    manifest = Path(manifest)
    base = manifest.resolve().parent
    report = VolumeLabelReport(tuple(labels))
    by_key: dict[str, SeriesTarget] = {}
    for target in targets:
        by_key[target.series_instance_uid] = target
        if target.folder:
            by_key.setdefault(target.folder.replace("\\", "/").strip("/"), target)
    rows: dict[str, list[tuple[Path, Mapping[int, str] | None, str]]] = defaultdict(list)
    lines: dict[str, list[int]] = defaultdict(list)
    for row in read_volume_mask_manifest(manifest):
        where = f"{manifest.name} line {row.line}"
        target = by_key.get(row.series)
        if target is None:
            report.problems.append(
                VolumeLabelProblem(Kind.SERIES_MISSING, where, f"no usable series has UID or folder {row.series!r}")
            )
            continue
        path = base / row.mask.replace("\\", "/")
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
        uid = target.series_instance_uid
        lines[uid].append(row.line)
        if not row.mask or not path.is_file():
            report.problems.append(VolumeLabelProblem(Kind.FILE_MISSING, name, f"{where}: no file {path}", uid))
            rows[uid].append((path, None, ""))  # keeps the series out: half its labels would be wrong
            continue
        rows[uid].append((path, row.values, name))
    for uid, files in rows.items():
        target = by_key[uid]
        source = f"{manifest.name} line" + ("s " if len(lines[uid]) > 1 else " ") + ", ".join(map(str, lines[uid]))
        if any(not name for _, _, name in files):
            report.results[uid] = VolumeLabels(tuple(labels), source)
            continue
        result = _combine(files, target, labels, source)
        report.results[uid] = result
        report.problems.extend(result.problems)
    for target in targets:
        if target.series_instance_uid not in rows:
            report.problems.append(
                VolumeLabelProblem(
                    Kind.MISSING,
                    target.folder or target.series_instance_uid,
                    f"no row in {manifest.name} names this series",
                    target.series_instance_uid,
                )
            )
    return report
