"""Read a site's label manifest (CSV) and join it to scanned images by the configured key.

Hospital exports arrive as Excel-made CSVs: BOMs, semicolons, tabs, Latin-1.
The reader copes with those and names the file and line of anything it cannot
use. The join reports every label problem instead of silently dropping rows.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.config import ConfigError
from shared.imaging.scan import FileRecord

KEY_TO_HEADER_FIELD = {
    "SOPInstanceUID": "sop_instance_uid",
    "StudyInstanceUID": "study_instance_uid",
    "AccessionNumber": "accession_number",
}


@dataclass
class LabelRow:
    key: str
    label: str
    line: int


@dataclass
class LabelProblem:
    key: str
    reason: str  # image-missing | image-rejected | conflicting-labels | unknown-class | empty-label | empty-key
    detail: str = ""

    def to_dict(self) -> dict:
        return {"key": self.key, "reason": self.reason, "detail": self.detail}


@dataclass
class JoinResult:
    """Usable labelled images (record, class index) plus everything that did not join."""

    matched: list[tuple[FileRecord, int]] = field(default_factory=list)
    problems: list[LabelProblem] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # relative paths of usable images without a label
    rows: int = 0


def _decode(raw: bytes, path: Path) -> str:
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ConfigError(f"{path}: cannot decode the file as UTF-8 or Latin-1")  # latin-1 never fails; kept for clarity


def _open_csv(path: Path, what: str):  # noqa: ANN202 - (header, csv reader over the remaining lines)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a CSV file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the {what}") from None
    text = _decode(raw, path)
    if not text.strip():
        raise ConfigError(f"{path}: the {what} is empty")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    return [h.strip() for h in next(reader)], reader


def csv_header(path: Path, what: str = "label file") -> list[str]:
    """The column names of an Excel-made CSV (as :func:`read_csv_columns` reads it); ConfigError naming the file."""
    return _open_csv(Path(path), what)[0]


def read_csv_columns(
    path: Path, columns: list[str], hint: str, what: str = "label file"
) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells of ``columns``) per non-empty row of an Excel-made CSV.

    Shared by the label CSV and the segmentation mask manifest, so both cope with the same
    encodings and delimiters. Raises ConfigError naming the file, column or line; ``hint``
    says which setting names the columns.
    """
    header, reader = _open_csv(Path(path), what)
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; found columns {header}. {hint}"
        )
    index = [header.index(c) for c in columns]
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(index):
            raise ConfigError(f"{path}: line {line_no} has {len(row)} fields, expected at least {max(index) + 1}")
        rows.append((line_no, [row[i].strip() for i in index]))
    return rows


def read_labels(path: Path, key: str, label_column: str = "label") -> list[LabelRow]:
    """Rows of (key, label, line number). Raises ConfigError naming the file, column or line."""
    hint = "Set --key / --label-column (site.yaml 'key' / 'label_column') to the right column names."
    return [LabelRow(k, label, line) for line, (k, label) in read_csv_columns(path, [key, label_column], hint)]


def record_key(record: FileRecord, key: str) -> str:
    """The value of the join key for a scanned file."""
    if key == "path":
        return record.path
    return getattr(record.header, KEY_TO_HEADER_FIELD[key])


def normalise_key(value: str, key: str) -> str:
    """A CSV key cell as :func:`record_key` spells it (paths: forward slashes, no leading ./)."""
    return PurePosixPath(value.replace("\\", "/")).as_posix().lstrip("./") if key == "path" else value


def join_labels(records: list[FileRecord], rows: list[LabelRow], key: str, classes: list[str]) -> JoinResult:
    """Join labels to usable images; conflicting duplicates are excluded and reported, never guessed."""
    result = JoinResult(rows=len(rows))
    labels_by_key: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if not row.key:
            result.problems.append(LabelProblem("", "empty-key", f"line {row.line} has no {key}"))
            continue
        if not row.label:
            result.problems.append(LabelProblem(row.key, "empty-label", f"line {row.line}"))
            continue
        labels_by_key[normalise_key(row.key, key)].add(row.label)

    usable: dict[str, list[FileRecord]] = defaultdict(list)
    rejected: dict[str, FileRecord] = {}
    for rec in records:
        k = record_key(rec, key)
        if not k:
            if rec.usable:
                result.unlabelled.append(rec.path)  # no value for the key at all: cannot be labelled
            continue
        if rec.usable:
            usable[k].append(rec)
        else:
            rejected.setdefault(k, rec)

    class_index = {c: i for i, c in enumerate(classes)}
    good: dict[str, int] = {}
    for k, labels in labels_by_key.items():
        if len(labels) > 1:
            result.problems.append(LabelProblem(k, "conflicting-labels", f"labels {sorted(labels)}; excluded"))
            continue
        (label,) = labels
        if label not in class_index:
            result.problems.append(LabelProblem(k, "unknown-class", f"label {label!r} not in task classes {classes}"))
            continue
        if k not in usable:
            if k in rejected:
                rec = rejected[k]
                result.problems.append(LabelProblem(k, "image-rejected", f"{rec.path}: {rec.reason}"))
            else:
                result.problems.append(LabelProblem(k, "image-missing", "no image with this key in the data folder"))
            continue
        good[k] = class_index[label]

    for k, recs in usable.items():
        if k in good:
            result.matched.extend((rec, good[k]) for rec in recs)
        elif k not in labels_by_key:
            result.unlabelled.extend(rec.path for rec in recs)
    result.matched.sort(key=lambda pair: pair[0].path)
    result.unlabelled.sort()
    return result
