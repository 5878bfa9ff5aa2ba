"""The site's audit log of everything it sent: append-only JSON lines, each chained to the one before.

One entry per outbound message (written by the ClientApp just before the
reply goes to Flower): time, run, round, message type, bytes, the sha256 of
every array, the metric keys and values, and the outbound guard's decisions.
Each entry carries ``prev``, the sha256 of the previous line's bytes, and the
head beside the log (:mod:`client.audit_head`: count, last hash, byte size,
signed with the site key) covers the lines written so far, so editing,
deleting or reordering any line — the last one included — is detected by
:func:`verify`, and so is rewriting log and head together without the key.
Heads can also be pinned elsewhere (:mod:`client.audit_pin`).

The log is the source of truth and survives a crash (:func:`_settle`, run
under the lock before every append): a line is fsynced before its head is
written, so a crash leaves at most one complete line the head does not cover
(rolled forward) and possibly an incomplete last line (cut off, its bytes
kept in ``outbound.jsonl.torn``; it was never sent, since the reply goes to
Flower only after its line and head are written). Either repair is recorded
as an ``audit-recovery`` line in the chain. Anything else that disagrees —
a corrupt or forged head, missing or extra lines — is tampering: an
:class:`AuditError`, and nothing is rewritten.

Writers hold an exclusive ``flock`` so two messages never interleave. Test
hook: with ``FEDRAD_AUDIT_CRASH_AFTER_LINE=1`` in its environment a writer
kills itself (SIGKILL) right after a line's fsync, before its head: the crash
the recovery is for (tests/security/test_audit_crash.py).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric import ec

from client.audit_head import (
    FILE_MODE,
    GENESIS,
    AuditError,
    Head,
    check_signature,
    head_path,
    new_head,
    read_head,
    write_head,
)
from client.audit_pin import AuditPinError, PinSettings, check_pins, pin_head

__all__ = [
    "GENESIS",
    "AuditError",
    "AuditSettings",
    "AuditSummary",
    "SiteAuditLog",
    "append_entry",
    "head_path",
    "prepare",
    "verify",
]

CRASH_ENV = "FEDRAD_AUDIT_CRASH_AFTER_LINE"
RECOVERY = "audit-recovery"
TORN_SUFFIX = ".torn"


class AuditKeyError(AuditError):
    """The site key that signs the heads cannot be loaded (not tampering: a configuration problem)."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AuditSettings:
    """How heads are written: signed with ``key`` (the site's private key) and pinned; none = unsigned (demos)."""

    key: Path | None = None
    pins: PinSettings = field(default_factory=PinSettings)

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> AuditSettings:
        """From the node config ``fedrad-site start`` sets (``audit-key``, ``audit-pin-file``, ``audit-pin-syslog``)."""
        key, pin_file, syslog = (str(node.get(k) or "") for k in ("audit-key", "audit-pin-file", "audit-pin-syslog"))
        return cls(
            key=Path(key) if key else None,
            pins=PinSettings(file=Path(pin_file) if pin_file else None, syslog=syslog or None),
        )

    def private_key(self) -> ec.EllipticCurvePrivateKey | None:
        if self.key is None:
            return None
        from shared.keys import SiteKeyError, load_private_key

        try:
            return load_private_key(self.key)
        except SiteKeyError as exc:
            raise AuditKeyError(f"cannot sign the audit head with the site key: {exc}") from None


@dataclass(frozen=True)
class SiteAuditLog:
    """One site's log as the ClientApp uses it: where it is, how heads are signed and pinned, whose it is."""

    path: Path
    settings: AuditSettings
    site: str

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> SiteAuditLog | None:
        """None when the node config names no ``audit-log`` (the site is then refused anyway)."""
        path = str(node.get("audit-log") or "")
        if not path:
            return None
        return cls(Path(path), AuditSettings.from_node_config(node), str(node.get("site-name") or "(unnamed site)"))

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        return append_entry(self.path, entry, self.settings)

    def check(self) -> None:
        """Before any work: repair a crash's traces, raise :class:`AuditError` on tampering."""
        key = self.settings.private_key()
        with _open_log(self.path) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            _settle(fh, self.path, key, self.settings.pins, adopt=False)

    def refusal(self, exc: AuditError) -> str:
        """What the server is told when this log refuses a message (it names the site and what to run)."""
        if isinstance(exc, AuditKeyError):
            return f"site {self.site}: audit log at {self.path} cannot be signed: {exc}; check site.yaml private_key"
        if isinstance(exc, AuditPinError):
            return f"site {self.site}: reply withheld, the audit head was not pinned: {exc}"
        return f"site {self.site}: audit log at {self.path} failed verification: {exc}; run fedrad-site audit verify"


def _open_log(log: Path) -> IO[bytes]:
    """The log opened for append and read, created 0640 (an existing looser file is tightened)."""
    log.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    if os.fstat(fd).st_mode & 0o027:
        os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "a+b")


def append_entry(log: Path, entry: dict[str, Any], settings: AuditSettings | None = None) -> dict[str, Any]:
    """Append ``entry`` (JSON-able) with ``seq``, ``time`` and ``prev``; return what was written.

    Raises :class:`AuditError` when the log or its head was tampered with (nothing is written then).
    """
    settings = settings or AuditSettings()
    log = Path(log)
    key = settings.private_key()
    with _open_log(log) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        head, _ = _settle(fh, log, key, settings.pins, adopt=False)
        record = {"seq": head.entries + 1, "time": _now(), **entry, "prev": head.last}
        _append_line(fh, log, record, head, key, settings.pins)
    return record


def prepare(log: Path, settings: AuditSettings | None = None) -> str | None:
    """At site start: repair a crash's traces and start signing a log written unsigned; what was done, or None.

    Adopting an unsigned log is done here only, when hospital IT starts the
    site, never by the per-message writer: otherwise anyone able to write the
    audit folder could replace log and head with unsigned ones and have the
    next message sign them.
    """
    settings = settings or AuditSettings()
    log = Path(log)
    if not log.exists() and not head_path(log).exists():
        return None
    key = settings.private_key()
    with _open_log(log) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _, note = _settle(fh, log, key, settings.pins, adopt=True)
    return None if note is None else str(note["reason"])


def _append_line(
    fh: IO[bytes],
    log: Path,
    record: dict[str, Any],
    head: Head,
    key: ec.EllipticCurvePrivateKey | None,
    pins: PinSettings,
) -> Head:
    """Write ``record`` as the next line, fsync it, then the new head (and its pins)."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    fh.write(line)
    fh.flush()
    os.fsync(fh.fileno())
    if os.environ.get(CRASH_ENV) == "1":  # test hook: the crash between a line and its head
        os.kill(os.getpid(), signal.SIGKILL)
    head = new_head(record["seq"], _sha(line), os.fstat(fh.fileno()).st_size, key)
    write_head(log, head)
    pin_head(log, head, pins)
    return head


def _settle(
    fh: IO[bytes], log: Path, key: ec.EllipticCurvePrivateKey | None, pins: PinSettings, *, adopt: bool
) -> tuple[Head, dict[str, Any] | None]:
    """Check the log's end against its head; repair the crash pattern (recorded); raise on anything else.

    Returns the head that now covers the whole log, and the recovery record if one was written.
    """
    found = read_head(log)
    head = found or Head()
    hp = head_path(log).name
    public = key.public_key() if key is not None else None
    if head.signed and public is None:
        raise AuditError(
            f"{hp}: the head is signed ({head.key}) but this writer has no site key to continue the chain: "
            "start the site with `fedrad-site start`, which passes it (site.yaml private_key)"
        )
    if head.signed and public is not None and (bad := check_signature(head, public)):
        raise AuditError(f"{hp}: {bad}: the log and head were rewritten without the site key, or the head was edited")
    adopting = public is not None and not head.signed and head.entries > 0
    if adopting and not adopt:
        raise AuditError(
            f"{hp}: the head is not signed, but this site signs its heads: log and head were rewritten without "
            "the site key, or they were written before FedRad signed heads; in that case `fedrad-site start` "
            "starts signing (and records it in the log)"
        )
    if adopting:
        verify(log)  # sign only a log whose chain holds
    if head.size is None:  # a head from before heads recorded the size
        head = replace(head, size=_offset_after(log, head.entries))
    covered = int(head.size or 0)
    size = os.fstat(fh.fileno()).st_size
    if size < covered:
        raise AuditError(
            f"{log}: {size} bytes, but its head ({hp}) covers {covered}: lines at the end were removed or shortened"
        )
    if head.entries:
        last = _line_ending_at(fh, covered)
        if _sha(last) != head.last or _seq(last) != head.entries:
            raise AuditError(f"{log}: line {head.entries} is not the line its head ({hp}) records: the log was edited")
    fh.seek(covered)
    tail = fh.read(size - covered)
    cut = tail.rfind(b"\n") + 1
    lines, torn = tail[:cut].splitlines(keepends=True), tail[cut:]
    if len(lines) > 1:
        raise AuditError(
            f"{log}: {len(lines)} lines after line {head.entries}, the last its head "
            f"({hp if found else 'missing'}) covers; a crash leaves at most one: lines were added or the head replaced"
        )
    if lines and (_seq(lines[0]) != head.entries + 1 or _field(lines[0], "prev") != head.last):
        raise AuditError(f"{log}: line {head.entries + 1} does not chain to line {head.entries}: the log was edited")
    if not lines and not torn and not adopting:
        return head, None
    reasons, note = [], {"type": RECOVERY, "head_was": head.entries}
    if torn:
        kept = _keep_torn(log, torn, covered + cut)
        fh.truncate(covered + cut)
        os.fsync(fh.fileno())
        note.update(torn_bytes=len(torn), torn_file=kept.name)
        reasons.append(
            f"an incomplete last line ({len(torn)} bytes; never sent, the reply leaves only after its line and "
            f"head) was cut off and kept in {kept.name}"
        )
    if lines:
        head = new_head(head.entries + 1, _sha(lines[0]), covered + len(lines[0]), key)
        write_head(log, head)
        pin_head(log, head, pins)
        note["covered"] = head.entries
        reasons.append(
            f"the site stopped between writing line {head.entries} and its head (that reply may not have left); "
            "the head now covers it"
        )
    if adopting:
        head = new_head(head.entries, head.last, head.size or 0, key)  # the chain verified above
        note["signing_started"] = head.key
        reasons.append(f"the head was unsigned; from here on it is signed with the site key {head.key}")
    note["reason"] = "; ".join(reasons)
    record = {"seq": head.entries + 1, "time": _now(), **note, "prev": head.last}
    return _append_line(fh, log, record, head, key, pins), note


def _seq(line: bytes) -> object:
    return _field(line, "seq")


def _field(line: bytes, name: str) -> object:
    try:
        return json.loads(line).get(name)
    except (ValueError, AttributeError):
        return None


def _line_ending_at(fh: IO[bytes], end: int) -> bytes:
    """The line whose newline is the byte before ``end``, read backwards in growing blocks."""
    block = 4096
    while True:
        start = max(0, end - block)
        fh.seek(start)
        data = fh.read(end - start)
        nl = data.rfind(b"\n", 0, len(data) - 1)
        if nl >= 0 or start == 0:
            return data[nl + 1 :]
        block *= 4


def _offset_after(log: Path, entries: int) -> int:
    """Byte offset just after line ``entries`` (for a head that did not record it)."""
    offset = 0
    for number, line in read_entries(log):
        if number > entries:
            break
        offset += len(line)
    return offset


def _keep_torn(log: Path, torn: bytes, offset: int) -> Path:
    """Append the cut bytes, exactly, to ``<log>.torn`` (durably, before they are cut from the log)."""
    side = Path(log).with_name(Path(log).name + TORN_SUFFIX)
    record = {"time": _now(), "offset": offset, "length": len(torn), "base64": base64.b64encode(torn).decode()}
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, json.dumps(record).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return side


def read_entries(log: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each line of the log."""
    with open(log, "rb") as fh:
        yield from enumerate(fh, start=1)


@dataclass
class AuditSummary:
    """What the site sent, according to a log that verified, and how far its evidence goes."""

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
    signature: str = "not checked"
    key: str | None = None
    recoveries: int = 0
    pins_checked: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify(log: Path, public: ec.EllipticCurvePublicKey | None = None, pinned: Path | None = None) -> AuditSummary:
    """Check the chain, the head, its signature (with ``public``) and pins; raise :class:`AuditError` at the first fault.

    Read-only: the traces of a crash (one line past the head, an incomplete
    last line) verify, with a note; the next message repairs them.
    """
    log = Path(log)
    if not log.is_file():
        raise AuditError(f"{log}: no audit log (nothing has been sent from this site yet, or wrong work_dir)")
    summary = AuditSummary(path=str(log))
    prev, rounds, runs, hashes, offsets, torn = GENESIS, set(), set(), [], [], b""
    offset = 0
    for number, line in read_entries(log):
        if not line.endswith(b"\n"):
            torn = line
            break
        try:
            entry = json.loads(line)
        except ValueError:
            raise AuditError(f"{log}: line {number} is not valid JSON: the log was edited or truncated") from None
        if not isinstance(entry, dict) or entry.get("seq") != number or entry.get("prev") != prev:
            raise AuditError(
                f"{log}: line {number} does not chain to line {number - 1}: the log was edited, "
                "lines were removed or reordered"
            )
        prev, offset = _sha(line), offset + len(line)
        hashes.append(prev)
        offsets.append(offset)
        if entry.get("type") == RECOVERY:
            summary.recoveries += 1
            summary.notes.append(f"line {number}: recovered after a crash or started signing: {entry.get('reason')}")
            continue
        _count(summary, entry, runs, rounds)
    lines = len(hashes)
    summary.entries, summary.runs, summary.rounds, summary.last_hash = (
        lines - summary.recoveries,
        len(runs),
        len(rounds),
        prev,
    )
    if torn:
        summary.notes.append(
            f"an incomplete last line ({len(torn)} bytes) from a crash mid-write: never sent; "
            "the next message cuts it off and keeps it in " + log.name + TORN_SUFFIX
        )
    head = _check_head(log, read_head(log), hashes, offsets, summary)
    _check_signature(log, head, public, summary)
    if pinned is not None:
        summary.pins_checked, latest = check_pins(
            pinned, log, lambda n: hashes[n - 1] if 0 < n <= lines else None, public
        )
        summary.notes.append(f"{summary.pins_checked} pinned heads hold; the latest covers {latest.entries} lines")
    return summary


def _countable(value: object) -> object:
    """A run or round id as a set member: a list or object (never written by FedRad) counts by its JSON text."""
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value, sort_keys=True)


def _count(summary: AuditSummary, entry: dict[str, Any], runs: set, rounds: set) -> None:
    summary.bytes += int(entry.get("bytes", 0))
    kind = str(entry.get("type"))
    summary.by_type[kind] = summary.by_type.get(kind, 0) + 1
    run, rnd = _countable(entry.get("run")), _countable(entry.get("round"))
    runs.add(run)
    rounds.add((run, rnd))
    decisions = entry.get("guard", [])
    summary.violations += sum(d.get("action") == "drop" for d in decisions)
    summary.withheld += sum(d.get("action") == "withhold" for d in decisions)
    summary.refused += kind == "refused"


def _check_head(log: Path, head: Head | None, hashes: list[str], offsets: list[int], summary: AuditSummary) -> Head:
    """The head must cover the log's lines but at most the last (a crash's trace), at the byte size it records."""
    lines, hp = len(hashes), head_path(log).name
    covered = head.entries if head is not None else 0
    problem = None
    if head is None and lines > 1:
        problem = f"there is no head ({hp}) beside a log of {lines} lines: it was deleted"
    elif covered > lines:
        problem = f"the head ({hp}) records {covered} lines, the log has {lines}: lines at the end were removed"
    elif covered and hashes[covered - 1] != head.last:
        problem = (
            f"the head ({hp}) records line {covered} ending in {head.last[:12]}…, the log's line {covered} "
            f"hashes to {hashes[covered - 1][:12]}…: the last line(s) were edited"
        )
    elif head is not None and head.size is not None and head.size != (offsets[covered - 1] if covered else 0):
        problem = f"the head ({hp}) covers {head.size} bytes, the log's first {covered} lines are not that long"
    elif lines - covered > 1:
        problem = f"the head ({hp}) covers {covered} of {lines} lines; a crash leaves at most one: lines were added"
    if problem:
        raise AuditError(f"{log}: {problem}")
    if lines > covered:
        summary.notes.append(
            f"line {lines} is not covered by the head yet: the site stopped between writing it and the head "
            "(a crash); the next message covers it"
        )
    return head or Head()


def _check_signature(log: Path, head: Head, public: ec.EllipticCurvePublicKey | None, summary: AuditSummary) -> None:
    summary.key = head.key
    if public is None:
        summary.signature = f"not checked (no site key given){'; head signed by ' + head.key if head.signed else ''}"
        if not head.signed:
            summary.notes.append("the head is unsigned: no site key was configured where it was written")
        return
    if not head.signed and head.entries == 0:
        summary.signature = "nothing to sign yet"
        return
    bad = check_signature(head, public)
    if bad == "the head is not signed":
        raise AuditError(
            f"{log}: the head ({head_path(log).name}) is not signed, but this site has a key: log and head were "
            "rewritten without it, or they were written before FedRad signed heads (then `fedrad-site start` "
            "starts signing and records it in the log)"
        )
    if bad:
        raise AuditError(f"{log}: {bad}: the log and head were rewritten without the site key, or the head was edited")
    summary.signature = f"valid (site key {head.key})"
