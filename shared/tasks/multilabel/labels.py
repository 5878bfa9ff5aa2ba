"""A multi-label CSV (one column per finding, CheXpert / MIMIC-CXR values) joined to the scanned images.

The file is the site's ordinary label CSV (same key columns, encodings and
delimiters as :mod:`shared.labels`), with one column per finding holding what
CheXpert and MIMIC-CXR write: ``1`` positive, ``0`` negative, ``-1`` uncertain,
blank unknown (``1.0``/``0.0``/``-1.0`` too, as pandas writes them). A finding
named ``pleural_effusion`` also matches a column ``Pleural Effusion`` (case,
spaces and ``-`` are not significant), so a CheXpert export needs no renaming.

Values are kept as they are written (1, 0, -1, NaN for blank): the uncertainty
policy is the consortium's and is applied at training time
(:func:`shared.tasks.multilabel.dataset.training_targets`); metrics use the
certain labels only. Anything else in a finding cell is an error naming the
file, line and column; join problems (image missing or rejected, conflicting
rows for one key, a row with every finding blank) are reported per key.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError
from shared.imaging.scan import FileRecord
from shared.labels import LabelProblem, csv_header, normalise_key, read_csv_columns, record_key

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
_VALUES = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE, "-0.0": NEGATIVE, "-1": UNCERTAIN}
_VALUES["-1.0"] = UNCERTAIN
_UNKNOWN = {"", "nan"}  # blank, or pandas' NaN written out
MAX_CELL_ERRORS = 5  # bad cells named in one error message


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def finding_columns(path: Path, findings: list[str]) -> list[str]:
    """The CSV column of each finding: the exact name, else the one equal up to case, spaces, '_' and '-'."""
    header = csv_header(path)
    columns = []
    for finding in findings:
        if finding in header:
            columns.append(finding)
            continue
        close = [h for h in header if _norm(h) == _norm(finding)]
        if len(close) > 1:
            raise ConfigError(f"{path}: finding {finding!r} matches several columns {close}; rename all but one")
        if not close:
            raise ConfigError(
                f"{path}: no column for finding {finding!r}; found columns {header}. A multi-label CSV has one "
                "column per finding of the task (1 positive, 0 negative, -1 uncertain, blank unknown)"
            )
        columns.append(close[0])
    return columns


def parse_value(cell: str) -> float | None:
    """A finding cell as 1.0, 0.0, -1.0 or NaN (unknown); None when it is none of these."""
    text = cell.strip().lower()
    if text in _UNKNOWN:
        return math.nan
    return _VALUES.get(text)


@dataclass
class FindingRow:
    key: str
    values: tuple[float, ...]  # per finding: 1, 0, -1, NaN
    line: int


def read_finding_labels(path: Path, key: str, findings: list[str]) -> list[FindingRow]:
    """Every row of the CSV as (key, values per finding, line); ConfigError naming file, line and column of bad cells."""
    path = Path(path)
    columns = finding_columns(path, findings)
    hint = "Set --key (site.yaml 'key') to the key column; the finding columns are named like the task's findings."
    rows, bad = [], []
    for line, (k, *cells) in read_csv_columns(path, [key, *columns], hint):
        values = []
        for column, cell in zip(columns, cells, strict=True):
            v = parse_value(cell)
            if v is None:
                bad.append(f"line {line}, column {column!r}: {cell!r}")
                v = math.nan
            values.append(v)
        rows.append(FindingRow(k, tuple(values), line))
    if bad:
        more = f" (and {len(bad) - MAX_CELL_ERRORS} more)" if len(bad) > MAX_CELL_ERRORS else ""
        raise ConfigError(
            f"{path}: {len(bad)} finding cell(s) are not labels: {'; '.join(bad[:MAX_CELL_ERRORS])}{more}. "
            "Write 1 (positive), 0 (negative), -1 (uncertain) or leave the cell blank (unknown)"
        )
    return rows


@dataclass
class FindingJoin:
    """Usable images with their finding values, plus everything that did not join (as :class:`shared.labels.JoinResult`)."""

    matched: list[tuple[FileRecord, tuple[float, ...]]] = field(default_factory=list)
    problems: list[LabelProblem] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    rows: int = 0


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


def join_finding_labels(records: list[FileRecord], rows: list[FindingRow], key: str) -> FindingJoin:
    """Join rows to usable images by ``key``; conflicting duplicates and all-blank rows are reported, never guessed."""
    result = FindingJoin(rows=len(rows))
    by_key: dict[str, list[FindingRow]] = defaultdict(list)
    for row in rows:
        if not row.key:
            result.problems.append(LabelProblem("", "empty-key", f"line {row.line} has no {key}"))
        elif all(math.isnan(v) for v in row.values):
            result.problems.append(LabelProblem(row.key, "empty-label", f"line {row.line}: every finding is blank"))
        else:
            by_key[normalise_key(row.key, key)].append(row)
    usable: dict[str, list[FileRecord]] = defaultdict(list)
    rejected: dict[str, FileRecord] = {}
    for rec in records:
        k = record_key(rec, key)
        if not k:
            if rec.usable:
                result.unlabelled.append(rec.path)
        elif rec.usable:
            usable[k].append(rec)
        else:
            rejected.setdefault(k, rec)
    good: dict[str, tuple[float, ...]] = {}
    for k, found in by_key.items():
        if any(not _same(found[0].values, r.values) for r in found[1:]):
            lines = ", ".join(str(r.line) for r in found)
            result.problems.append(LabelProblem(k, "conflicting-labels", f"lines {lines} differ; excluded"))
        elif k in usable:
            good[k] = found[0].values
        elif k in rejected:
            result.problems.append(LabelProblem(k, "image-rejected", f"{rejected[k].path}: {rejected[k].reason}"))
        else:
            result.problems.append(LabelProblem(k, "image-missing", "no image with this key in the data folder"))
    for k, recs in usable.items():
        if k in good:
            result.matched.extend((rec, good[k]) for rec in recs)
        elif k not in by_key:
            result.unlabelled.extend(rec.path for rec in recs)
    result.matched.sort(key=lambda pair: pair[0].path)
    result.unlabelled.sort()
    return result
