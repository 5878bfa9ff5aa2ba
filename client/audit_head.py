"""The audit log's head (``outbound.jsonl.head.json``): how many lines, the last one's hash, signed by the site key.

Why a head at all: the hash chain alone cannot show that its last lines were
cut off. Why signed: someone who can write the audit folder could otherwise
rewrite the log and the head together. The signature is made with the site's
own SuperNode key (``site.yaml`` ``private_key``, an OpenSSH EC key the site
already guards), so :func:`check_signature` with the public half — the one the
coordinator enrolled — tells a FedRad-written head from a forged one.

Why ``size``: the byte length of the log the head covers lets a writer check
the log's end in constant time (the last covered line and what follows it)
instead of rereading the whole log for every message.

The head is replaced atomically (temp file, fsync, rename, fsync of the
folder): after a crash it is either the old head or the new one, never half.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shared.atomic import write_atomic
from shared.keys import key_fingerprint

GENESIS = "0" * 64
HEAD_SUFFIX = ".head.json"
VERSION = 2
FILE_MODE = 0o640  # readable by the site's admin group (auditors), never by other local users
_DOMAIN = b"fedrad-audit-head-v2\n"  # a signature over a head can never be mistaken for one over anything else
_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}


class AuditError(ValueError):
    """The audit log is broken or was edited; the message names the file and the line."""


@dataclass(frozen=True)
class Head:
    """What the head records. ``size`` is None for a head written before FedRad signed heads."""

    entries: int = 0
    last: str = GENESIS
    size: int | None = 0
    time: str = ""
    key: str | None = None
    sig: str | None = None

    @property
    def signed(self) -> bool:
        return self.sig is not None

    def payload(self) -> bytes:
        """The signed bytes: every field but the signature, canonical JSON."""
        body = {"entries": self.entries, "last": self.last, "size": self.size, "time": self.time, "key": self.key}
        return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "entries": self.entries,
            "last": self.last,
            "size": self.size,
            "time": self.time,
            "key": self.key,
            "sig": self.sig,
        }


def head_path(log: Path) -> Path:
    return Path(log).with_name(Path(log).name + HEAD_SUFFIX)


def new_head(entries: int, last: str, size: int, key: ec.EllipticCurvePrivateKey | None) -> Head:
    """A head for the log's first ``size`` bytes, signed when the site has a key."""
    time = datetime.now(UTC).isoformat(timespec="milliseconds")
    if key is None:
        return Head(entries, last, size, time)
    unsigned = Head(entries, last, size, time, key_fingerprint(key.public_key()))
    sig = key.sign(unsigned.payload(), ec.ECDSA(_HASHES[key.curve.name]()))
    return Head(entries, last, size, time, unsigned.key, base64.b64encode(sig).decode())


def parse_head(data: Any, source: str) -> Head:
    """A head from its JSON object; :class:`AuditError` naming ``source`` for anything else."""
    if not isinstance(data, dict):
        raise AuditError(f"{source}: the audit head is not a JSON object: it was edited or overwritten")
    legacy = set(data) == {"entries", "last"}
    try:
        if not legacy and (data.get("version") != VERSION or set(data) != set(Head().to_json())):
            raise TypeError(f"unexpected fields {sorted(data)}")
        head = Head(
            entries=data["entries"],
            last=data["last"],
            size=None if legacy else data["size"],
            time="" if legacy else data["time"],
            key=None if legacy else data["key"],
            sig=None if legacy else data["sig"],
        )
        ok = (
            isinstance(head.entries, int)
            and head.entries >= 0
            and isinstance(head.last, str)
            and len(head.last) == 64
            and (head.size is None or (isinstance(head.size, int) and head.size >= 0))
            and all(v is None or isinstance(v, str) for v in (head.key, head.sig))
        )
        if not ok:
            raise TypeError("a field has the wrong type")
    except (KeyError, TypeError) as exc:
        raise AuditError(f"{source}: the audit head is malformed ({exc}): it was edited or overwritten") from None
    return head


def read_head(log: Path) -> Head | None:
    """The head beside ``log``; None when there is none. A corrupt head is an :class:`AuditError`, never a default."""
    path = head_path(log)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise AuditError(f"{path}: the audit head is not valid JSON: it was edited or damaged") from None
    return parse_head(data, str(path))


def write_head(log: Path, head: Head) -> None:
    """Replace the head atomically and durably (the rename is fsynced through the folder)."""
    write_atomic(head_path(log), json.dumps(head.to_json(), sort_keys=True).encode() + b"\n", mode=FILE_MODE)


def check_signature(head: Head, public: ec.EllipticCurvePublicKey) -> str | None:
    """None when ``head`` is signed by ``public``; otherwise why not, in words."""
    if head.sig is None:
        return "the head is not signed"
    expected = key_fingerprint(public)
    if head.key != expected:
        return f"the head names key {head.key}, the site's key is {expected}"
    try:
        public.verify(base64.b64decode(head.sig, validate=True), head.payload(), ec.ECDSA(_HASHES[public.curve.name]()))
    except (InvalidSignature, ValueError):
        return "the head's signature does not match its content and the site's key"
    return None
