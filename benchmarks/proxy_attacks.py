"""The outside review's attacks on the fleet proxy (issue 21, findings 1-3), as small clients on raw TLS sockets.

Each function is one attacker and returns what it saw, so a benchmark can print figures and a test can
assert them: ``tests/security/test_proxy_attacks.py`` and ``benchmarks/bench_proxy_attacks.py`` share them.
``source`` binds the attacker to another loopback address (``127.0.0.2``) so the proxy's per-client
limit tells it apart from the sites, which connect from ``127.0.0.1``.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

ATTACKER = "127.0.0.2"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size (``VmRSS``) or its high-water mark (``VmHWM``) of a process, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tls_connect(port: int, ca: Path, source: str = ATTACKER, timeout: float = 30.0) -> ssl.SSLSocket:
    """A TLS connection to the proxy on 127.0.0.1 from ``source``, handshake done."""
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def signed_headers(private_key: Path) -> str:
    """Fresh SuperNode auth headers signed with a site's OpenSSH private key, as Flower writes them."""
    from cryptography.hazmat.primitives import serialization
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    key = serialization.load_ssh_private_key(Path(private_key).read_bytes(), password=None)
    stamp = dt.datetime.now(tz=dt.UTC).isoformat()
    public = b64encode(public_key_to_bytes(key.public_key())).decode()  # type: ignore[arg-type]
    signature = b64encode(sign_message(key, stamp.encode("ascii"))).decode()  # type: ignore[arg-type]
    return f"flwr-public-key: {public}\r\nflwr-timestamp: {stamp}\r\nflwr-signature: {signature}\r\n"


def status_line(sock: ssl.SSLSocket) -> str:
    """The first line the proxy answered, or how the connection ended."""
    try:
        data = sock.recv(200)
    except OSError as exc:
        return f"closed ({exc.__class__.__name__})"
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def big_unsigned_body(port: int, ca: Path, megabytes: int) -> str:
    """An unauthenticated POST of ``megabytes`` MB to push-object, sent as fast as the proxy takes it."""
    size = megabytes * 1_000_000
    with tls_connect(port, ca) as s:
        s.sendall(f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk, sent = b"x" * 1_000_000, 0
        try:
            while sent < size:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the proxy answered and closed: the rest of the body was never read
        return f"{status_line(s)} after {sent // 1_000_000} MB sent"


@dataclass
class HeldConnection:
    """An attacker's connection and when the proxy closed it (None while open)."""

    sock: ssl.SSLSocket | None
    opened: float
    closed_after_s: float | None = None
    refused: bool = False  # closed at once (handshake or first read failed)


def open_idle(port: int, ca: Path, first_bytes: bytes = b"") -> HeldConnection:
    """A TLS connection that sends ``first_bytes`` (a partial request head, or nothing) and then stalls."""
    t0 = time.monotonic()
    try:
        sock = tls_connect(port, ca, timeout=5.0)
        if first_bytes:
            sock.sendall(first_bytes)
    except OSError:
        return HeldConnection(None, t0, 0.0, refused=True)
    sock.setblocking(False)
    return HeldConnection(sock, t0)


def poll_closed(held: list[HeldConnection], trickle: bytes = b"") -> None:
    """Note which connections the proxy has closed; optionally send one more byte on the open ones."""
    now = time.monotonic()
    for h in held:
        if h.closed_after_s is not None or h.sock is None:
            continue
        try:
            if trickle:
                h.sock.send(trickle)
            if h.sock.recv(1) == b"":
                raise ConnectionResetError
        except (ssl.SSLWantReadError, BlockingIOError):
            continue  # still open, nothing to read
        except OSError:
            pass
        h.closed_after_s = now - h.opened
        h.sock.close()


def close_all(held: list[HeldConnection]) -> None:
    for h in held:
        if h.sock is not None:
            h.sock.close()


def request(port: int, ca: Path, head: bytes, body: bytes = b"", source: str = ATTACKER) -> str:
    """Send one request (head, then body); return the proxy's status line."""
    try:
        with tls_connect(port, ca, source=source) as s:
            s.sendall(head + body)
            return status_line(s)
    except OSError as exc:
        return f"closed ({exc.__class__.__name__})"
