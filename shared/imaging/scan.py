"""Scan a site's DICOM export: one row per file, usable or rejected with a reason.

One pass reads, hashes, decodes and preprocesses each file, each by its modality
(:mod:`shared.imaging.modality`); results go to the
:class:`~shared.imaging.cache.IngestCache`, so the next scan of an unchanged
export reads neither DICOM headers nor pixels; each image goes to a cache shard as
soon as it is decoded, so a scan that crashes keeps what it finished. Files that need decoding are
spread over worker processes when there are enough of them to pay for the
workers' start-up (decoding is CPU-bound and pydicom holds the GIL).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.atomic import is_temp_file
from shared.config import PreprocessConfig
from shared.hardware import usable_cores
from shared.imaging.cache import IngestCache
from shared.imaging.dicom_reader import ImageHeader
from shared.imaging.modality import preprocess, read_image
from shared.imaging.pack import from_pack, to_pack
from shared.imaging.reasons import Reason, Rejection

ProgressFn = Callable[[int, int], None]
IGNORED_DIR_NAMES = {".fedrad-cache", ".git", "__pycache__"}
MIN_FILES_PER_WORKER = 16  # below this a worker's start-up costs more than it saves


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
        """The model input of a usable record, float32 (its modality's rank: (S, S) for a radiograph); rebuilt
        from the DICOM file if the cache entry is gone or damaged. The same bits as a cache hit
        (:func:`shared.imaging.pack.quantize`)."""
        img = self.cache.get_tensor(record.sha256)
        if img is None:
            row = self.rebuild(record)
            img = from_pack(row)
        return img

    def rebuild(self, record: FileRecord) -> np.ndarray:
        """Decode ``record`` again and cache it; its uint16 row."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # as in decode_file
            _, decoded = read_image((self.data_dir / record.path).read_bytes())
        row = to_pack(preprocess(decoded, self.cache.params))
        self.cache.put_tensor(record.sha256, row)
        self.cache.decoded += 1
        return row

    def ensure_cached(self, records: list[FileRecord]) -> None:
        """Decode any of ``records`` whose image is not in the cache (a shard dropped since the scan), then
        commit, so every one of them can be located (:meth:`IngestCache.locate`)."""
        for record in records:
            if not self.cache.has_tensor(record.sha256):
                self.rebuild(record)
        self.flush_cache()

    def flush_cache(self) -> None:
        """Persist the cache: commit what was written, hand back the shards being written."""
        self.cache.flush()


def list_files(data_dir: Path) -> tuple[list[Path], list[FileRecord]]:
    """Every regular file under ``data_dir`` (sorted), plus a rejected row for each unreadable folder.

    A file still being written by FedRad (``fedrad-site receive``'s temporary files, :func:`shared.atomic.is_temp_file`)
    is not part of the export yet: it is skipped, and the finished file is seen by the next scan."""
    files: list[Path] = []
    problems: list[FileRecord] = []

    def onerror(err: OSError) -> None:
        rel = Path(err.filename).relative_to(data_dir).as_posix() if err.filename else "."
        problems.append(
            FileRecord(rel, reason=Reason.UNREADABLE.value, detail=f"folder cannot be listed: {err.strerror}")
        )

    for root, dirs, names in os.walk(data_dir, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIR_NAMES)
        files.extend(Path(root) / n for n in sorted(names) if not is_temp_file(n))
    return files, problems


def decode_file(path: str, params: PreprocessConfig) -> tuple[str, dict, np.ndarray | None]:
    """Read, hash, classify, decode and preprocess one file: (sha256, record entry, image or None).

    Runs in worker processes, so it takes and returns only plain picklable values
    and never raises for file content.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return "", _entry(Reason.UNREADABLE.value, f"cannot read file: {exc.strerror or exc}"), None
    sha = hashlib.sha256(raw).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's complaints become reasons, not noise
        try:
            header, decoded = read_image(raw)
            image = to_pack(preprocess(decoded, params))  # uint16: half the bytes back from a worker
            return sha, _entry("", "", header, usable=True), image
        except Rejection as rej:
            return sha, _entry(rej.reason.value, rej.detail, rej.header), None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a decoder bug (even a Rust panic) on one odd file must not stop the site
            return sha, _entry(Reason.CORRUPT_PIXEL_DATA.value, f"{type(exc).__name__}: {str(exc)[:160]}"), None


def _entry(reason: str, detail: str, header: ImageHeader | None = None, usable: bool = False) -> dict:
    return {"usable": usable, "reason": reason, "detail": detail, "header": (header or ImageHeader()).to_dict()}


def _record(rel: str, sha: str, entry: dict) -> FileRecord:
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


def default_workers(n_files: int) -> int:
    """Worker processes for ``n_files`` to decode: FEDRAD_INGEST_WORKERS, else every core this process may use.

    Memory is bounded by the workers, not the data: each holds one decoded file at a time (a 3,000 px
    radiograph and its float copy, ~100 MB), and results stream to the cache's shards as they come."""
    configured = os.environ.get("FEDRAD_INGEST_WORKERS")
    cores = int(configured) if configured and configured.isdigit() else usable_cores()
    return max(1, min(cores, n_files // MIN_FILES_PER_WORKER))


def _decode_all(todo: list[Path], params: PreprocessConfig, workers: int):
    if workers <= 1:
        for path in todo:
            yield decode_file(str(path), params)
        return
    # fork: workers start in milliseconds. They run only pydicom, NumPy and Pillow (never torch or
    # OpenMP), so the parent's thread pools, which a fork does not copy, are never touched there.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(decode_file, [str(p) for p in todo], [params] * len(todo), chunksize=8)


def scan_site(
    data_dir: Path,
    params: PreprocessConfig,
    cache_dir: Path | None = None,
    on_progress: ProgressFn | None = None,
    workers: int | None = None,
) -> ScanResult:
    """Scan ``data_dir`` recursively; never raises for file content, only for a missing data folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist or is not a folder")
    cache = IngestCache(cache_dir, params)
    files, problems = list_files(data_dir)
    results: dict[Path, FileRecord] = {}
    todo: list[tuple[Path, os.stat_result | None]] = []
    for path in files:  # first pass: what the cache already knows costs one stat()
        rel = path.relative_to(data_dir).as_posix()
        try:
            stat = path.stat()
        except OSError as exc:
            results[path] = FileRecord(rel, reason=Reason.UNREADABLE.value, detail=f"cannot read file: {exc.strerror}")
            continue
        sha = cache.memo_sha(path, stat)
        known = cache.record(sha) if sha else None
        if known is not None and (not known["usable"] or cache.has_tensor(sha)):
            cache.hits += 1
            results[path] = _record(rel, sha, known)
        else:
            todo.append((path, stat))
    done = len(results)
    if on_progress is not None:
        on_progress(done, len(files))
    n_workers = workers if workers is not None else default_workers(len(todo))
    for (path, stat), (sha, entry, image) in zip(todo, _decode_all([p for p, _ in todo], params, n_workers)):
        rel = path.relative_to(data_dir).as_posix()
        if sha:
            cache.remember(path, stat, sha, entry)
            if image is not None:
                cache.put_tensor(sha, image)
            cache.decoded += 1
        results[path] = _record(rel, sha, entry)
        done += 1
        if on_progress is not None:
            on_progress(done, len(files))
    records = problems + [results[p] for p in files]
    _mark_duplicates(records)
    scan = ScanResult(data_dir=data_dir, records=records, cache=cache)
    scan.flush_cache()
    return scan
