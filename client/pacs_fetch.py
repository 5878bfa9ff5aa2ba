"""``fedrad-site fetch``: find studies at PACS and bring them into the site's received tree.

One loop for both transports: each query of the :class:`~client.fetch_request.FetchRequest` goes to the backend's
``find`` (C-FIND or QIDO-RS at study level), each study found to its ``retrieve`` (C-GET, C-MOVE or WADO-RS), which
stores every instance with :func:`client.received_tree.store_part10`. Association failures and transient errors
are retried with backoff (3 tries: 0.5 s, then 1 s); a PACS that cannot be reached or refuses the association stops
the run. The summary says what was found, fetched, already here, missing (asked, no match at PACS) and refused
(a failure status, with its code and meaning); ``WORK_DIR/fetch/fetch.jsonl`` keeps what was asked and fetched at
the site.

A study whose folder already holds as many instances as PACS says it has (NumberOfStudyRelatedInstances) is not
retrieved again; any other study is, and instances already on disk are kept, not rewritten.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from client.fetch_request import FetchRequest, FetchSite, StudyQuery, missing_pacs_message
from shared.config import ConfigError

ATTEMPTS = 3
BACKOFF_S = 0.5
LOG_FOLDER = "fetch"
LOG_NAME = "fetch.jsonl"

T = TypeVar("T")


class TransientPacsError(Exception):
    """Worth another try: no connection, an aborted association, a timeout, a busy server."""


class PacsUnavailable(Exception):
    """PACS cannot be used for this run (rejected association, refused credentials, unreachable after retries)."""


class StudyRefused(Exception):
    """PACS answered one query or retrieval with a failure status."""

    def __init__(self, code: str, meaning: str) -> None:
        super().__init__(f"{code} {meaning}")
        self.code, self.meaning = code, meaning


@dataclass
class FoundStudy:
    """One study PACS matched."""

    study_uid: str
    accession: str = ""
    study_date: str = ""
    modalities: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    instances: int | None = None  # NumberOfStudyRelatedInstances, when PACS says
    asked: str = ""


@dataclass
class Retrieved:
    """What one study's retrieval stored."""

    new: int = 0
    kept: int = 0
    bytes: int = 0
    failed: int = 0  # sub-operations PACS reports as failed (or instances we could not store)
    problem: str | None = None  # why some failed, when known


class FetchBackend(Protocol):
    description: str
    retrieve_mode: str

    def find(self, query: StudyQuery) -> list[FoundStudy]: ...

    def retrieve(self, study: FoundStudy, dest: Path) -> Retrieved: ...

    def close(self) -> None: ...


def with_retries(
    fn: Callable[[], T], what: str, attempts: int = ATTEMPTS, backoff: float = BACKOFF_S, sleep=time.sleep
) -> T:
    """``fn()``, tried again after ``backoff``, ``2*backoff``, … on a :class:`TransientPacsError`."""
    for i in range(attempts):
        try:
            return fn()
        except TransientPacsError as exc:
            last = exc
            if i + 1 < attempts:
                sleep(backoff * 2**i)
    raise PacsUnavailable(f"{what}: {last} (tried {attempts} times)")


@dataclass
class StudyOutcome:
    study_uid: str
    accession: str
    asked: str
    status: str  # fetched, present (already here), partial, refused, not_retrieved
    new: int = 0
    kept: int = 0
    bytes: int = 0
    seconds: float = 0.0
    code: str | None = None
    meaning: str | None = None


@dataclass
class FetchSummary:
    """What one fetch did; ``ok`` when every study asked for is here."""

    via: str
    retrieve: str
    peer: str
    receive_dir: str
    log: str
    asked: int = 0
    found: list[FoundStudy] = field(default_factory=list)
    studies: list[StudyOutcome] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # queries PACS refused: {asked, code, meaning}
    unavailable: str | None = None
    not_asked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = {"partial", "refused", "not_retrieved"}
        return not (self.missing or self.refused or self.unavailable or any(s.status in bad for s in self.studies))

    def totals(self) -> dict[str, Any]:
        fetched = [s for s in self.studies if s.new]
        return {
            "studies": len(fetched),
            "instances": sum(s.new for s in self.studies),
            "bytes": sum(s.bytes for s in self.studies),
            "already_here": sum(s.kept for s in self.studies),
            "studies_already_here": sum(s.status == "present" for s in self.studies),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict[str, Any]:
        failed = [asdict(s) for s in self.studies if s.status in ("partial", "refused", "not_retrieved")]
        return {
            "ok": self.ok,
            "via": self.via,
            "retrieve": self.retrieve,
            "peer": self.peer,
            "receive_dir": self.receive_dir,
            "log": self.log,
            "asked": self.asked,
            "found": len(self.found),
            "fetched": self.totals(),
            "missing": self.missing,
            "refused": self.refused + [{"asked": s["asked"], "study": s["study_uid"], **_code(s)} for s in failed],
            "unavailable": self.unavailable,
            "not_asked": self.not_asked,
            "studies": [asdict(s) for s in self.studies],
            "notes": self.notes,
        }


def _code(s: dict) -> dict[str, str]:
    return {"code": s.get("code") or "", "meaning": s.get("meaning") or s["status"]}


class FetchLog:
    """``WORK_DIR/fetch/fetch.jsonl``: one JSON line per query, study and run (owner-only; it names accessions)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def local_instances(dest: Path, study_uid: str) -> int:
    folder = Path(dest) / study_uid
    return sum(1 for _ in folder.glob("*/*.dcm")) if folder.is_dir() else 0


def make_backend(site: FetchSite, via: str) -> FetchBackend:
    """The transport ``via`` names, from site.yaml's pacs section (a missing section: what to add)."""
    if via == "dicomweb":
        if site.pacs.dicomweb is None:
            raise ConfigError(missing_pacs_message(site.config, via))
        from client.dicomweb_fetch import DicomWebBackend

        return DicomWebBackend(site.pacs.dicomweb)
    if via != "dimse":
        raise ConfigError(f"--via {via!r}: dimse (C-FIND + C-GET/C-MOVE) or dicomweb (QIDO-RS + WADO-RS)")
    if site.pacs.peer is None:
        raise ConfigError(missing_pacs_message(site.config, via))
    from client.dimse_fetch import DimseBackend

    return DimseBackend(site.pacs.peer, site.pacs.node, site.receive_dir)


ProgressFn = Callable[[str, int, int], None]


def fetch(
    site: FetchSite,
    request: FetchRequest,
    via: str = "dimse",
    *,
    on_progress: ProgressFn | None = None,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_S,
    backend: FetchBackend | None = None,
) -> FetchSummary:
    """Ask PACS for every query of ``request`` and retrieve every study it matched into ``site.receive_dir``."""
    backend = backend or make_backend(site, via)
    progress = on_progress or (lambda stage, done, total: None)
    dest = Path(site.receive_dir)
    log = FetchLog(Path(site.work_dir) / LOG_FOLDER / LOG_NAME)
    summary = FetchSummary(
        via=via,
        retrieve=backend.retrieve_mode,
        peer=backend.description,
        receive_dir=str(dest),
        log=str(log.path),
        asked=len(request.queries),
        notes=list(request.notes),
    )
    t0 = time.perf_counter()
    log.write("start", via=via, retrieve=backend.retrieve_mode, peer=backend.description, source=request.source)
    found: dict[str, FoundStudy] = {}
    queries = list(request.queries)
    try:
        for i, query in enumerate(queries):
            progress("find", i, len(queries))
            try:
                hits = with_retries(lambda q=query: backend.find(q), f"query {query.label}", attempts, backoff)
            except StudyRefused as exc:
                summary.refused.append({"asked": query.label, "code": exc.code, "meaning": exc.meaning})
                log.write("refused", query=query.to_json(), code=exc.code, meaning=exc.meaning)
                continue
            except PacsUnavailable:
                summary.not_asked = [q.label for q in queries[i:]]
                raise
            log.write("found", query=query.to_json(), studies=[h.study_uid for h in hits])
            if not hits and request.by_list:
                summary.missing.append(query.label)
            for hit in hits:
                found.setdefault(hit.study_uid, hit)
        progress("find", len(queries), len(queries))
        summary.found = list(found.values())
        studies = summary.found
        for j, study in enumerate(studies):
            progress("retrieve", j, len(studies))
            try:
                outcome = _retrieve_one(backend, study, dest, attempts, backoff)
            except PacsUnavailable:
                summary.studies += [
                    StudyOutcome(s.study_uid, s.accession, s.asked, "not_retrieved") for s in studies[j:]
                ]
                raise
            summary.studies.append(outcome)
            log.write("study", **asdict(outcome))
        progress("retrieve", len(studies), len(studies))
    except PacsUnavailable as exc:
        summary.unavailable = str(exc)
        log.write("unavailable", reason=str(exc))
    finally:
        backend.close()
        summary.seconds = time.perf_counter() - t0
    log.write("summary", ok=summary.ok, found=len(summary.found), fetched=summary.totals(), missing=summary.missing)
    return summary


def _retrieve_one(backend: FetchBackend, study: FoundStudy, dest: Path, attempts: int, backoff: float) -> StudyOutcome:
    outcome = StudyOutcome(study.study_uid, study.accession, study.asked, "fetched")
    here = local_instances(dest, study.study_uid)
    if study.instances and here >= study.instances:
        outcome.status, outcome.kept = "present", here
        return outcome
    t0 = time.perf_counter()
    try:
        got = with_retries(
            lambda: backend.retrieve(study, dest),
            f"retrieve study {study.accession or study.study_uid}",
            attempts,
            backoff,
        )
    except StudyRefused as exc:
        outcome.status, outcome.code, outcome.meaning = "refused", exc.code, exc.meaning
        return outcome
    finally:
        outcome.seconds = round(time.perf_counter() - t0, 3)
    outcome.new, outcome.kept, outcome.bytes = got.new, got.kept, got.bytes
    expected = study.instances or 0
    if got.failed or (expected and got.new + got.kept < expected):
        outcome.status = "partial"
        outcome.code = "0xB000" if got.failed else None
        short = f"{got.new + got.kept} of {expected} instances" if expected else f"{got.failed} instance(s) failed"
        outcome.meaning = f"{short}: {got.problem}" if got.problem else short
    elif not got.new and got.kept:
        outcome.status = "present"
    return outcome
