"""The storage node's local log: one JSON line per association, plus the node's start and stop.

``WORK_DIR/receive/receive.jsonl`` (owner-only). It stays at the site: it names calling AE titles, peer addresses
and the UIDs of refused objects, and nothing in FedRad sends it anywhere. Each association line holds: ``time``
(UTC, when it ended), ``calling_ae``, ``called_ae``, ``peer`` (address), ``tls`` (and the peer certificate's
subject when one was shown), ``accepted`` (false with ``refused``: why the association was refused), the counts
``stored``, ``duplicate``, ``rejected`` (by reason code), ``bytes`` received, ``seconds``, and up to
:data:`MAX_LISTED` ``rejections`` (SOPInstanceUID, reason, detail).

Reason codes are the scan's (:mod:`shared.imaging.reasons`) plus two of the node's own: ``invalid-uid`` (a
Study/Series/SOP Instance UID that is no valid UID, so it cannot name a file) and ``out-of-resources`` (the file
could not be written: disk full, folder not writable).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shared.private_files import PRIVATE_FILE_MODE, private_dir

INVALID_UID = "invalid-uid"
OUT_OF_RESOURCES = "out-of-resources"
MAX_LISTED = 100  # refused objects listed by name per association line; the counts are always complete


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class AssociationStats:
    """What one association brought."""

    calling_ae: str
    called_ae: str
    peer: str
    tls: bool = False
    peer_certificate: str = ""
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicate: int = 0
    rejected: Counter = field(default_factory=Counter)
    stored_by_kind: Counter = field(default_factory=Counter)
    bytes: int = 0
    rejections: list[dict] = field(default_factory=list)

    def reject(self, reason: str, detail: str, sop_uid: str) -> None:
        self.rejected[reason] += 1
        if len(self.rejections) < MAX_LISTED:
            self.rejections.append({"sop_instance_uid": sop_uid[:80], "reason": reason, "detail": detail[:200]})

    def to_json(self) -> dict:
        out = {
            "event": "association",
            "time": utc_now(),
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": self.peer,
            "tls": self.tls,
            "accepted": True,
            "stored": self.stored,
            "stored_by_kind": dict(self.stored_by_kind),
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
            "bytes": self.bytes,
            "seconds": round(time.monotonic() - self.started, 3),
        }
        if self.peer_certificate:
            out["peer_certificate"] = self.peer_certificate
        if self.rejections:
            out["rejections"] = self.rejections
        return out


class ReceiveLog:
    """Appends JSON lines to the node's log (thread-safe; each line flushed and synced as it is written)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        self._lock = threading.Lock()

    def write(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=False, default=str) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)


def read_log(path: Path) -> list[dict]:
    """Every entry of a receive log (tests, the site's own tools)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def describe(entry: dict) -> str:
    """One console line for a log entry (rich markup)."""
    who = f"{entry.get('calling_ae', '?')} @ {entry.get('peer', '?')}"
    if entry.get("event") == "start":
        tls = "TLS, peer certificates required" if entry.get("tls") == "mutual" else entry.get("tls") or "no TLS"
        return (
            f"[bold]receiving[/] as {entry['ae_title']} on {entry['bind']}:{entry['port']} ({tls}); "
            f"callers {', '.join(entry['allowed_callers'])}; into {entry['receive_dir']}"
        )
    if entry.get("event") == "stop":
        return (
            f"[bold]stopped[/]: {entry['associations']} association(s), {entry['stored']} stored, "
            f"{entry['duplicate']} duplicate(s), {sum(entry['rejected'].values())} rejected"
            f"{_reasons(entry['rejected'])}, {entry['refused']} refused"
        )
    if entry.get("event") == "handshake-failed":
        return f"[yellow]refused[/] {entry['peer']}: {entry['refused']}"
    if not entry.get("accepted"):
        return f"[yellow]refused[/] {who} (called {entry.get('called_ae', '?')}): {entry.get('refused')}"
    seconds = max(float(entry.get("seconds", 0)), 1e-6)
    rejected = sum(entry["rejected"].values())
    return (
        f"{who}{' (TLS)' if entry.get('tls') else ''}: {entry['stored']} stored, {entry['duplicate']} duplicate(s), "
        f"{rejected} rejected{_reasons(entry['rejected'])}; {entry['bytes'] / 1e6:.1f} MB in {seconds:.1f} s "
        f"({entry['stored'] / seconds:.1f} images/s)"
    )


def _reasons(counts: dict) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else ""
