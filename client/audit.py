"""The site's audit log of everything it sent: append-only JSON lines, each chained to the one before.

One entry per outbound message (written by the ClientApp just before the
reply goes to Flower): time, run, round, message type, bytes, the sha256 of
every array, the metric keys and values, and the outbound guard's decisions.
Each entry carries ``prev``, the sha256 of the previous line's bytes, and
``audit.head.json`` beside the log holds the count and the hash of the last
line, so editing, deleting or reordering any line — the last one included —
is detected by :func:`verify`. It proves integrity against edits, not against
someone who can rewrite the whole file and the head together: keep a copy of
the head elsewhere (e.g. print ``fedrad-site audit verify --json`` into the
hospital's own log system) to pin it.

Writers hold an exclusive ``flock`` so two messages never interleave.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
HEAD_SUFFIX = ".head.json"


class AuditError(ValueError):
    """The audit log is broken or was edited; the message names the line."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def head_path(log: Path) -> Path:
    return Path(log).with_name(Path(log).name + HEAD_SUFFIX)


def append_entry(log: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` (JSON-able) with ``seq``, ``time`` and ``prev``; return what was written."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            head = _read_head(log)
            record = {
                "seq": head["entries"] + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                **entry,
                "prev": head["last"],
            }
            line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            _write_head(log, {"entries": record["seq"], "last": _sha(line)})
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return record


def _read_head(log: Path) -> dict[str, Any]:
    path = head_path(log)
    if not path.exists():
        return {"entries": 0, "last": GENESIS}
    return json.loads(path.read_text())


def _write_head(log: Path, head: dict[str, Any]) -> None:
    tmp = head_path(log).with_suffix(".tmp")
    tmp.write_text(json.dumps(head))
    os.replace(tmp, head_path(log))


def read_entries(log: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each line of the log."""
    with open(log, "rb") as fh:
        yield from enumerate(fh, start=1)


@dataclass
class AuditSummary:
    """What the site sent, according to a log that verified."""

    path: str
    entries: int = 0
    bytes: int = 0
    runs: int = 0
    rounds: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    withheld: int = 0
    refused: int = 0
    last_hash: str = GENESIS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify(log: Path) -> AuditSummary:
    """Check the chain and the head; raise :class:`AuditError` at the first broken line."""
    log = Path(log)
    if not log.is_file():
        raise AuditError(f"{log}: no audit log (nothing has been sent from this site yet, or wrong work_dir)")
    summary = AuditSummary(path=str(log))
    prev, rounds, runs = GENESIS, set(), set()
    for number, line in read_entries(log):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AuditError(f"{log}: line {number} is not valid JSON: the log was edited or truncated") from None
        if entry.get("seq") != number or entry.get("prev") != prev:
            raise AuditError(
                f"{log}: line {number} does not chain to line {number - 1}: the log was edited, "
                "lines were removed or reordered"
            )
        prev = _sha(line)
        summary.entries += 1
        summary.bytes += int(entry.get("bytes", 0))
        kind = str(entry.get("type"))
        summary.by_type[kind] = summary.by_type.get(kind, 0) + 1
        runs.add(entry.get("run"))
        rounds.add((entry.get("run"), entry.get("round")))
        decisions = entry.get("guard", [])
        summary.violations += sum(d.get("action") == "drop" for d in decisions)
        summary.withheld += sum(d.get("action") == "withhold" for d in decisions)
        summary.refused += kind == "refused"
    head = _read_head(log)
    if head != {"entries": summary.entries, "last": prev}:
        raise AuditError(
            f"{log}: the head ({head_path(log).name}) records {head.get('entries')} entries ending in "
            f"{str(head.get('last'))[:12]}…, the log has {summary.entries} ending in {prev[:12]}…: "
            "the last line(s) were edited or removed"
        )
    summary.runs, summary.rounds, summary.last_hash = len(runs), len(rounds), prev
    return summary
