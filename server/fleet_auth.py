"""The fleet proxy's checks before it reads a request body: a real Fleet route, a signed request, never a replay.

Flower's SuperNodes sign every Fleet HTTP request: ``flwr-public-key`` and ``flwr-signature`` (base64) over
``flwr-timestamp`` (ISO 8601, freshly taken for every attempt, retries included). The SuperLink checks them,
but only after it has parsed the whole body, so an unauthenticated client could make the proxy and the
SuperLink buffer tens of megabytes. The proxy therefore checks the signature itself, from the headers alone,
before reading a byte of the body, and remembers every (key, timestamp, signature) it accepted for as long as
Flower would accept that timestamp: Flower signs only the timestamp, so a captured header is otherwise good
for another five minutes.

What this cannot know is whether the key is enrolled (the SuperLink still checks that, with the body);
it makes an attacker pay for a key pair and a signature per request and refuses headers replayed from a
real site.
"""

from __future__ import annotations

import binascii
import datetime
import hashlib
import time
from base64 import b64decode
from collections.abc import Mapping

PUBLIC_KEY_HEADER = "flwr-public-key"
SIGNATURE_HEADER = "flwr-signature"
TIMESTAMP_HEADER = "flwr-timestamp"
CLOCK_AHEAD_S = 5.0  # Flower's SYSTEM_TIME_TOLERANCE: a site clock this far ahead of the server is accepted
MAX_AGE_S = 305.0  # Flower's TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE: the SuperLink accepts no older one

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


class ReplayGuard:
    """The signed headers accepted in the last ``MAX_AGE_S`` seconds; bounded, oldest forgotten first."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: dict[bytes, float] = {}  # digest → when it may be forgotten (monotonic); insertion-ordered
        self.max_entries = max_entries

    def first_use(self, public_key: str, timestamp: str, signature: str, now: float | None = None) -> bool:
        """True the first time these headers are seen (and remember them); False for a replay."""
        now = time.monotonic() if now is None else now
        while self._seen and (next(iter(self._seen.values())) <= now or len(self._seen) >= self.max_entries):
            del self._seen[next(iter(self._seen))]
        digest = hashlib.sha256(f"{public_key}\0{timestamp}\0{signature}".encode()).digest()
        if digest in self._seen:
            return False
        self._seen[digest] = now + MAX_AGE_S + CLOCK_AHEAD_S
        return True


def route_limit(route: str) -> int | None:
    """The body limit of a Fleet route (the path's last part); None for a name Flower does not serve."""
    return ROUTE_MAX_BODY.get(route)


def auth_problem(headers: Mapping[str, str], replays: ReplayGuard, now: datetime.datetime | None = None) -> str | None:
    """Why a request's signed headers are not acceptable, or None: read before its body, never after."""
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
    if not -CLOCK_AHEAD_S < age < MAX_AGE_S:
        return f"timestamp {age:+.0f} s old, outside (-{CLOCK_AHEAD_S:g} s, {MAX_AGE_S:g} s)"
    try:
        valid = verify_signature(bytes_to_public_key(key), stamp.encode("ascii"), signature)
    except Exception:  # noqa: BLE001 - a key that cannot be read verifies nothing
        valid = False
    if not valid:
        return "signature does not verify"
    if not replays.first_use(key_text, stamp, signature_text):
        return "replayed signed headers"
    return None
