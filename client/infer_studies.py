"""Which studies ``fedrad-site infer`` runs on, and their images in the site's DICOM export.

A study is asked for by StudyInstanceUID (``--study``, repeatable) or listed in a CSV (``--accessions``) with an
``AccessionNumber`` or a ``StudyInstanceUID`` column. Its images are found in the scan of the export
(:func:`shared.imaging.scan_site`, the cached scan every site command shares: one ``stat`` per known file), so they
pass the same checks as the images the model was trained on; a file of the study the scan rejected is reported
with its reason, never silently used.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError
from shared.imaging import FileRecord, ScanResult
from shared.labels import read_csv_columns

# A CSV of studies: the column that names them, in the order looked for, and what each matches.
STUDY_COLUMNS = {"StudyInstanceUID": "study_instance_uid", "AccessionNumber": "accession_number"}


@dataclass(frozen=True)
class StudyRequest:
    """One study asked for: by ``StudyInstanceUID`` or ``AccessionNumber`` (the column's name)."""

    by: str
    value: str

    def describe(self) -> str:
        return f"{'study' if self.by == 'StudyInstanceUID' else 'accession'} {self.value}"


@dataclass
class StudyImages:
    """A requested study found in the export: its usable images (sorted by path) and its files the scan rejected."""

    request: StudyRequest
    study_uid: str
    accession: str
    records: list[FileRecord]
    rejected: list[FileRecord] = field(default_factory=list)


@dataclass
class Missing:
    """A requested study with no usable image in the export, and why (rejected files, if any)."""

    request: StudyRequest
    rejected: list[FileRecord] = field(default_factory=list)

    def message(self, data: Path) -> str:
        what = self.request.describe()
        if not self.rejected:
            return (
                f"{what}: not in the export {data} (no image with that {self.request.by}); fetch it first "
                f"(`fedrad-site fetch`) or check that the export holds it"
            )
        reasons = ", ".join(sorted({r.reason for r in self.rejected}))
        return (
            f"{what}: {len(self.rejected)} file(s) in the export {data}, none usable ({reasons}); "
            "`fedrad-site check` lists why"
        )


def read_requests(studies: list[str], csv_path: Path | None) -> list[StudyRequest]:
    """The studies asked for, in order, each once; ConfigError when there are none or the CSV is unusable."""
    requests = [StudyRequest("StudyInstanceUID", s.strip()) for s in studies if s.strip()]
    if csv_path is not None:
        requests += _csv_requests(Path(csv_path))
    if not requests:
        raise ConfigError("name the studies: --study UID (repeatable) or --accessions list.csv")
    return list(dict.fromkeys(requests))


def _csv_requests(path: Path) -> list[StudyRequest]:
    hint = f"a study list needs a column named {' or '.join(STUDY_COLUMNS)}"
    problem = None
    for column in STUDY_COLUMNS:
        try:
            rows = read_csv_columns(path, [column], hint, what="study list")
        except ConfigError as exc:
            if "missing column" not in str(exc):
                raise
            problem = exc
            continue
        values = [cells[0] for _, cells in rows if cells[0]]
        if not values:
            raise ConfigError(f"{path}: the {column} column is empty; list one study per line")
        return [StudyRequest(column, v) for v in values]
    raise problem or ConfigError(f"{path}: {hint}")


def find_studies(scan: ScanResult, requests: list[StudyRequest]) -> tuple[list[StudyImages], list[Missing]]:
    """Each request's study (an accession may name several) with its images, or why it is missing."""
    usable: dict[str, dict[str, list[FileRecord]]] = {k: defaultdict(list) for k in STUDY_COLUMNS}
    rejected: dict[str, dict[str, list[FileRecord]]] = {k: defaultdict(list) for k in STUDY_COLUMNS}
    for rec in scan.records:
        for column, attr in STUDY_COLUMNS.items():
            value = getattr(rec.header, attr)
            if value:
                (usable if rec.usable else rejected)[column][value].append(rec)
    found: list[StudyImages] = []
    missing: list[Missing] = []
    seen: set[str] = set()
    for req in requests:
        records = usable[req.by].get(req.value, [])
        if not records:
            missing.append(Missing(req, rejected[req.by].get(req.value, [])))
            continue
        by_study: dict[str, list[FileRecord]] = defaultdict(list)
        for rec in records:
            by_study[rec.header.study_instance_uid].append(rec)
        for study_uid, recs in sorted(by_study.items()):
            if study_uid in seen:  # asked for twice (by UID and by accession): run once
                continue
            seen.add(study_uid)
            found.append(
                StudyImages(
                    req,
                    study_uid,
                    recs[0].header.accession_number,
                    sorted(recs, key=lambda r: r.path),
                    sorted(rejected["StudyInstanceUID"].get(study_uid, []), key=lambda r: r.path),
                )
            )
    return found, missing
