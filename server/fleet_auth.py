"""The fleet proxy's checks before it reads a request body: a real Fleet route, a signed request, never a replay.

Flower's SuperNodes sign every Fleet HTTP request: ``flwr-public-key`` and ``flwr-signature`` (base64) over
``flwr-timestamp`` (ISO 8601, freshly taken for every attempt, retries included). The SuperLink checks them,
but only after it has parsed the whole body, so an unauthenticated client could make the proxy and the
SuperLink buffer tens of megabytes. The proxy therefore checks the signature itself, from the headers alone,
before reading a byte of the body, and remembers every (key, timestamp, signature) it accepted for as long as
Flower would accept that timestamp: Flower signs only the timestamp, so a captured header is otherwise good
for another five minutes.

Given the consortium's enrolled keys (:class:`EnrolledKeys`, written by the coordinator at start), the proxy
also refuses a key that is not enrolled before it verifies anything, so an outsider cannot make it buffer a
byte by minting a key pair. The accepted age of a signature is narrowed from Flower's five minutes to what
clock skew needs (``DEFAULT_MAX_AGE_S``): a SuperNode signs a fresh timestamp for every attempt, so a real
request is never older than the skew between the hospital's clock and the server's plus the network delay.
"""

from __future__ import annotations

import binascii
import datetime
import hashlib
import logging
import time
from base64 import b64decode
from collections.abc import Mapping
from pathlib import Path

PUBLIC_KEY_HEADER = "flwr-public-key"
SIGNATURE_HEADER = "flwr-signature"
TIMESTAMP_HEADER = "flwr-timestamp"
CLOCK_AHEAD_S = 5.0  # Flower's SYSTEM_TIME_TOLERANCE: a site clock this far ahead of the server is accepted
MAX_AGE_S = 305.0  # Flower's TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE: the SuperLink accepts no older one
DEFAULT_MAX_AGE_S = 90.0  # the proxy's own window: NTP keeps hospital clocks within seconds; 90 s is generous

# Flower 1.42's Fleet HTTP routes (flwr/supernode/fleet_http_client.py) and the largest body each may carry:
# objects are pushed in chunks of at most 5 MB; every other call is a small protobuf message.
OBJECT_BODY_BYTES = 64 * 1024 * 1024
MESSAGE_BODY_BYTES = 8 * 1024 * 1024
ROUTE_MAX_BODY: dict[str, int] = {
    "register-node": MESSAGE_BODY_BYTES,
    "activate-node": MESSAGE_BODY_BYTES,
    "deactivate-node": MESSAGE_BODY_BYTES,
    "unregister-node": MESSAGE_BODY_BYTES,
    "send-node-heartbeat": MESSAGE_BODY_BYTES,
    "pull-messages": MESSAGE_BODY_BYTES,
    "push-messages": MESSAGE_BODY_BYTES,
    "get-run": MESSAGE_BODY_BYTES,
    "get-fab": MESSAGE_BODY_BYTES,
    "push-object": OBJECT_BODY_BYTES,
    "pull-object": MESSAGE_BODY_BYTES,
    "confirm-message-received": MESSAGE_BODY_BYTES,
}


log = logging.getLogger("fedrad.fleet_proxy")


class EnrolledKeysError(ValueError):
    """The enrolled-keys file cannot be read; the message names it."""


class EnrolledKeys:
    """The SuperNode public keys the consortium enrolled, from an OpenSSH ``.pub``-lines file.

    Read again when the file changes (checked at most every ``recheck_s``), so a key removed from the file is
    refused from the next request on. A file that becomes unreadable keeps the last good set and logs why.
    """

    def __init__(self, path: Path, recheck_s: float = 2.0) -> None:
        self.path, self.recheck_s = Path(path), recheck_s
        self._keys: frozenset[bytes] = frozenset()
        self._mtime: float | None = None
        self._checked = 0.0
        self._keys = self._read()  # at start an unreadable file is an error, not an empty set

    def _read(self) -> frozenset[bytes]:
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key

        try:
            self._mtime = self.path.stat().st_mtime
            lines = [ln.strip() for ln in self.path.read_text().splitlines()]
            return frozenset(_der(load_ssh_public_key(ln.encode())) for ln in lines if ln and not ln.startswith("#"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise EnrolledKeysError(
                f"{self.path}: cannot read the enrolled site keys ({exc}); the coordinator writes this file "
                "from the site registry at start (fedrad-server start)"
            ) from None

    def __len__(self) -> int:
        return len(self._keys)

    def contains(self, public_key_der: bytes, now: float | None = None) -> bool:
        """Whether a key (DER SubjectPublicKeyInfo) is enrolled, re-reading the file if it changed."""
        now = time.monotonic() if now is None else now
        if now - self._checked >= self.recheck_s:
            self._checked = now
            try:
                if self.path.stat().st_mtime != self._mtime:
                    self._keys = self._read()
                    log.info("enrolled keys re-read from %s: %d keys", self.path, len(self._keys))
            except (OSError, EnrolledKeysError) as exc:
                log.warning("%s; keeping the %d keys read before", exc, len(self._keys))
        return public_key_der in self._keys


def _der(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


class ReplayGuard:
    """The signed headers accepted in the last ``max_age_s`` seconds; bounded, oldest forgotten first."""

    def __init__(self, max_entries: int = 200_000, max_age_s: float = MAX_AGE_S) -> None:
        self._seen: dict[bytes, float] = {}  # digest → when it may be forgotten (monotonic); insertion-ordered
        self.max_entries = max_entries
        self.max_age_s = max_age_s

    def first_use(self, public_key: str, timestamp: str, signature: str, now: float | None = None) -> bool:
        """True the first time these headers are seen (and remember them); False for a replay."""
        now = time.monotonic() if now is None else now
        while self._seen and (next(iter(self._seen.values())) <= now or len(self._seen) >= self.max_entries):
            del self._seen[next(iter(self._seen))]
        digest = hashlib.sha256(f"{public_key}\0{timestamp}\0{signature}".encode()).digest()
        if digest in self._seen:
            return False
        self._seen[digest] = now + self.max_age_s + CLOCK_AHEAD_S
        return True


def route_limit(route: str) -> int | None:
    """The body limit of a Fleet route (the path's last part); None for a name Flower does not serve."""
    return ROUTE_MAX_BODY.get(route)


def auth_problem(
    headers: Mapping[str, str],
    replays: ReplayGuard,
    now: datetime.datetime | None = None,
    enrolled: EnrolledKeys | None = None,
) -> str | None:
    """Why a request's signed headers are not acceptable, or None: read before its body, never after.

    The replay guard's ``max_age_s`` is the accepted age; ``enrolled`` (when given) must hold the key.
    """
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    try:
        key_text, signature_text, stamp = (
            headers[PUBLIC_KEY_HEADER],
            headers[SIGNATURE_HEADER],
            headers[TIMESTAMP_HEADER],
        )
    except KeyError as exc:
        return f"no {exc.args[0]} header (not a signed SuperNode request)"
    try:
        key = b64decode(key_text, validate=True)
        signature = b64decode(signature_text, validate=True)
        signed_at = datetime.datetime.fromisoformat(stamp)
        if signed_at.tzinfo is None:
            return "timestamp without a time zone"
    except (ValueError, binascii.Error):
        return "malformed signature headers"
    age = ((now or datetime.datetime.now(tz=datetime.UTC)) - signed_at).total_seconds()
    if not -CLOCK_AHEAD_S < age < replays.max_age_s:
        return (
            f"timestamp {age:+.0f} s old, outside (-{CLOCK_AHEAD_S:g} s, {replays.max_age_s:g} s): "
            "check the site's clock (NTP)"
        )
    try:
        public_key = bytes_to_public_key(key)
    except Exception:  # noqa: BLE001 - a key that cannot be read verifies nothing
        return "unreadable public key"
    if enrolled is not None and not enrolled.contains(_der(public_key)):
        return "public key not enrolled in this consortium"
    try:
        valid = verify_signature(public_key, stamp.encode("ascii"), signature)
    except Exception:  # noqa: BLE001 - a malformed signature verifies nothing
        valid = False
    if not valid:
        return "signature does not verify"
    if not replays.first_use(key_text, stamp, signature_text):
        return "replayed signed headers"
    return None
