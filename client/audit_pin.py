"""Pin each audit head outside the audit folder: one line per head in a file (another volume) and/or syslog.

Why: a signature stops someone without the site key; a pin also stops someone
who has it (or who rewrites the log and waits for a site restart). A head
copied where the site's service account cannot rewrite it (an append-only
file on another volume, the hospital's syslog collector) fixes what the log
said at that time; ``fedrad-site audit verify --pinned FILE`` then shows any
later rewrite (:func:`check_pins`).

The pin file is written before the reply leaves: if it cannot be written the
reply is withheld (fail closed, like the log itself). Syslog is a datagram
with no delivery receipt, so it is best effort and only warns.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from client.audit_head import FILE_MODE, AuditError, Head, check_signature, parse_head

DEFAULT_SYSLOG = "/dev/log"


class AuditPinError(AuditError):
    """The pin file cannot be written (a configuration or volume problem, not tampering)."""


@dataclass(frozen=True)
class PinSettings:
    """Where heads are pinned (site.yaml ``audit:``); both None = not pinned."""

    file: Path | None = None
    syslog: str | None = None  # a Unix datagram socket, normally /dev/log

    @property
    def active(self) -> bool:
        return self.file is not None or self.syslog is not None


def pin_head(log: Path, head: Head, pins: PinSettings) -> None:
    """Copy ``head`` to the pin file (durably; :class:`AuditError` if it cannot) and to syslog (best effort)."""
    record = {"log": str(Path(log).resolve()), **head.to_json()}
    if pins.file is not None:
        try:
            fd = os.open(pins.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.write(fd, json.dumps(record, sort_keys=True).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditPinError(
                f"cannot pin the audit head to {pins.file} (site.yaml audit.pin_file): {exc.strerror or exc}; "
                "check that its volume is mounted and writable by the site's service account"
            ) from None
    if pins.syslog is not None:
        _syslog_line(pins.syslog, "fedrad-audit: " + json.dumps(record, sort_keys=True))


def _syslog_line(address: str, line: str) -> None:
    """One line to the syslog socket at ``address``; a warning on stderr if there is none."""
    logger = logging.getLogger("fedrad.audit.pin")
    logger.propagate = False
    try:
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV, socktype=socket.SOCK_DGRAM
        )
    except OSError as exc:
        print(f"FedRad: audit head not pinned to syslog {address}: {exc}", file=sys.stderr, flush=True)
        return
    logger.addHandler(handler)
    try:
        logger.warning(line)
    finally:
        logger.removeHandler(handler)
        handler.close()


def check_pins(
    pin_file: Path,
    log: Path,
    line_hash: Callable[[int], str | None],
    public: ec.EllipticCurvePublicKey | None = None,
) -> tuple[int, Head | None]:
    """(pins checked, the latest) for ``log`` in ``pin_file``; :class:`AuditError` at the first the log contradicts.

    ``line_hash(n)`` is the sha256 of the log's line ``n``, None when the log
    has fewer lines. Every pinned head must still be a prefix of the log, and a
    signed pin must carry the site's signature (``public``).
    """
    pin_file, target = Path(pin_file), str(Path(log).resolve())
    try:
        lines = pin_file.read_bytes().splitlines()
    except OSError as exc:
        raise AuditError(f"{pin_file}: cannot read the pinned heads ({exc.strerror or exc})") from None
    checked, latest = 0, None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            where = data.pop("log")
        except (ValueError, AttributeError, KeyError):
            raise AuditError(f"{pin_file}: line {number} is not a pinned audit head: the pin file was edited") from None
        if where != target:
            continue  # another site's log sharing the pin file
        pinned = parse_head(data, f"{pin_file} line {number}")
        bad = check_signature(pinned, public) if public is not None and pinned.signed else None
        if bad:
            raise AuditError(f"{pin_file} line {number}: {bad}: the pin file was edited")
        found = line_hash(pinned.entries) if pinned.entries else None
        if pinned.entries and found != pinned.last:
            has = "has fewer lines" if found is None else f"has line {pinned.entries} hashing to {found[:12]}…"
            raise AuditError(
                f"{log}: pinned head at {pin_file} line {number} ({pinned.time or 'legacy'}) records "
                f"{pinned.entries} entries ending in {pinned.last[:12]}…, but the log {has}: "
                "the log was rewritten after it was pinned"
            )
        checked, latest = checked + 1, pinned
    if not checked:
        raise AuditError(f"{pin_file} has no pinned heads for {target}: wrong file, or pinning is not set up")
    return checked, latest
