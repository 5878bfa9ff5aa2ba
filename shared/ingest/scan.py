"""Scan a site's DICOM export: one row per file, usable or rejected with a reason.

One pass reads, hashes, decodes and preprocesses each file; results go to the
:class:`~shared.ingest.cache.IngestCache`, so the next scan of an unchanged
export reads neither DICOM headers nor pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.config import PreprocessConfig
from shared.ingest.cache import IngestCache
from shared.ingest.dicom_reader import ImageHeader, read_image
from shared.ingest.preprocess import preprocess_image
from shared.ingest.reasons import Reason, Rejection

ProgressFn = Callable[[int, int], None]
IGNORED_DIR_NAMES = {".fedrad-cache", ".git", "__pycache__"}


@dataclass
class FileRecord:
    """The verdict for one file. ``path`` is relative to the data folder (POSIX separators)."""

    path: str
    sha256: str = ""
    usable: bool = False
    reason: str = ""
    detail: str = ""
    header: ImageHeader = field(default_factory=ImageHeader)


@dataclass
class ScanResult:
    data_dir: Path
    records: list[FileRecord]
    cache: IngestCache

    @property
    def usable(self) -> list[FileRecord]:
        return [r for r in self.records if r.usable]

    @property
    def rejected(self) -> list[FileRecord]:
        return [r for r in self.records if not r.usable]

    def load_image(self, record: FileRecord) -> np.ndarray:
        """The preprocessed image of a usable record; rebuilt from the DICOM file if the cache entry is gone."""
        img = self.cache.get_tensor(record.sha256)
        if img is None:
            raw = (self.data_dir / record.path).read_bytes()
            _, values = read_image(raw)
            img = preprocess_image(values, self.cache.params)
            self.cache.put_tensor(record.sha256, img)
            self.cache.decoded += 1
        return img


def list_files(data_dir: Path) -> tuple[list[Path], list[FileRecord]]:
    """Every regular file under ``data_dir`` (sorted), plus a rejected row for each unreadable folder."""
    files: list[Path] = []
    problems: list[FileRecord] = []

    def onerror(err: OSError) -> None:
        rel = Path(err.filename).relative_to(data_dir).as_posix() if err.filename else "."
        problems.append(FileRecord(rel, reason=Reason.UNREADABLE.value, detail=f"folder cannot be listed: {err.strerror}"))

    for root, dirs, names in os.walk(data_dir, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIR_NAMES)
        files.extend(Path(root) / n for n in sorted(names))
    return files, problems


def _ingest_one(path: Path, rel: str, cache: IngestCache) -> FileRecord:
    """Hash, classify, decode and cache one file; any problem becomes a rejected record."""
    try:
        stat = path.stat()
        sha = cache.memo_sha(path, stat)
        raw = None
        if sha is None:
            raw = path.read_bytes()
            sha = hashlib.sha256(raw).hexdigest()
            cache.remember_sha(path, stat, sha)
    except OSError as exc:
        return FileRecord(rel, reason=Reason.UNREADABLE.value, detail=f"cannot read file: {exc.strerror or exc}")

    known = cache.records.get(sha)
    if known is not None and (not known["usable"] or cache.has_tensor(sha)):
        cache.hits += 1
        return _record_from_cache(rel, sha, known)

    try:
        if raw is None:
            raw = path.read_bytes()
        header, values = read_image(raw)
        cache.put_tensor(sha, preprocess_image(values, cache.params))
        record = FileRecord(rel, sha, usable=True, header=header)
    except Rejection as rej:
        record = FileRecord(rel, sha, reason=rej.reason.value, detail=rej.detail, header=rej.header or ImageHeader())
    except OSError as exc:
        return FileRecord(rel, sha, reason=Reason.UNREADABLE.value, detail=f"cannot read file: {exc.strerror or exc}")
    except Exception as exc:  # a decoder bug on one odd file must not stop the site
        record = FileRecord(rel, sha, reason=Reason.CORRUPT_PIXEL_DATA.value, detail=f"{type(exc).__name__}: {str(exc)[:160]}")
    cache.decoded += 1
    cache.records[sha] = {
        "usable": record.usable, "reason": record.reason, "detail": record.detail, "header": record.header.to_dict(),
    }
    return record


def _record_from_cache(rel: str, sha: str, entry: dict) -> FileRecord:
    return FileRecord(rel, sha, entry["usable"], entry["reason"], entry["detail"], ImageHeader(**entry["header"]))


def _mark_duplicates(records: list[FileRecord]) -> None:
    """Second copies of a file, or a second object claiming the same SOPInstanceUID, are rejected."""
    by_sha: dict[str, str] = {}
    by_sop: dict[str, str] = {}
    for rec in records:
        if not rec.usable:
            continue
        if rec.sha256 in by_sha:
            rec.usable, rec.reason = False, Reason.DUPLICATE_FILE.value
            rec.detail = f"same content as {by_sha[rec.sha256]}"
            continue
        by_sha[rec.sha256] = rec.path
        sop = rec.header.sop_instance_uid
        if sop and sop in by_sop:
            rec.usable, rec.reason = False, Reason.DUPLICATE_SOP_INSTANCE.value
            rec.detail = f"SOPInstanceUID also in {by_sop[sop]}"
        elif sop:
            by_sop[sop] = rec.path


def scan_site(
    data_dir: Path,
    params: PreprocessConfig,
    cache_dir: Path | None = None,
    on_progress: ProgressFn | None = None,
) -> ScanResult:
    """Scan ``data_dir`` recursively; never raises for file content, only for a missing data folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist or is not a folder")
    cache = IngestCache(cache_dir, params)
    files, records = list_files(data_dir)
    for i, path in enumerate(files):
        records.append(_ingest_one(path, path.relative_to(data_dir).as_posix(), cache))
        if on_progress is not None:
            on_progress(i + 1, len(files))
    _mark_duplicates(records)
    cache.flush()
    return ScanResult(data_dir=data_dir, records=records, cache=cache)
