"""The fleet proxy's limits on connections, below the HTTP handler: deadlines, per-client caps, TLS, quiet logs.

Why here and not in the request handler: a client that never finishes its request headers never reaches
the handler. uvicorn (0.49) closes a connection that idles *between* requests (``timeout_keep_alive``) and
caps open connections in total (``limit_concurrency``), but a connection that trickles its headers, or
opens TLS and sends nothing, is held forever, and one address may take every slot. The outside review held
300 slow-header and 20 idle TLS connections for 150 s. :class:`GuardedH11Protocol` adds what is missing
to uvicorn's own h11 protocol:

* a **header deadline**: from the moment a connection is open to the end of its first request's headers,
  at most ``header_timeout_s`` (after a response: uvicorn's keep-alive idle time plus that), else the
  connection is closed;
* a **per-client cap**: at most ``max_per_client`` open connections from one address; more are closed
  at once (a hospital's SuperNode keeps one or two);
* a **hard close**: a connection the proxy gives up on is aborted, not shut down politely. A TLS close
  waits for the peer's close_notify (asyncio allows 30 s) and reads, to discard, everything the peer
  still sends: a client refused with 401 could otherwise push its whole 63 MB body anyway.

The body has its own deadline in the handler (:func:`body_deadline_s`), where its declared size is known.
:func:`harden_tls` (shared/tls_policy.py) leaves TLS 1.2 only with forward-secret AEAD suites (no CBC), and TLS 1.3.
:class:`RateLimitedLog` keeps a flood of refused requests from filling the disk with one line each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.tls_policy import harden_tls

__all__ = ["GuardedH11Protocol", "RateLimitedLog", "guarded_protocol", "harden_tls"]

HEADER_TIMEOUT_S = 10.0  # Flower's headers are < 1 KiB and are sent in one write
MAX_CONNECTIONS_PER_CLIENT = 32  # per remote address; a SuperNode uses one or two
CLOSE_GRACE_S = 1.0  # after a refusal: time for the answer to leave before the socket is dropped
BODY_GRACE_S = 10.0
MIN_BODY_BYTES_PER_S = 64 * 1024  # a 5 MB object chunk may take 10 s + 80 s on a 0.5 Mbit/s link

log = logging.getLogger("fedrad.fleet_proxy")


def body_deadline_s(declared_bytes: int | None, limit: int) -> float:
    """Seconds a body of ``declared_bytes`` (or, undeclared, up to ``limit``) may take to arrive."""
    return BODY_GRACE_S + (limit if declared_bytes is None else declared_bytes) / MIN_BODY_BYTES_PER_S


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on connections per client address."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    open_per_client: Counter[str] = Counter()  # one proxy process serves one listener

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else "?"
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None
        if self.open_per_client[self._peer] >= self.max_per_client:
            log.warning("refused a connection from %s: %d open already", self._peer, self.max_per_client)
            transport.abort()
            return
        self.open_per_client[self._peer] += 1
        self._counted = True
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        if getattr(self, "_abort_timer", None) is not None:
            self._abort_timer.cancel()
        if self._counted:
            self._counted = False
            self.open_per_client[self._peer] -= 1
            if self.open_per_client[self._peer] <= 0:
                del self.open_per_client[self._peer]
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request's headers are complete
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():  # a refusal (or the client said close): drop it once the answer left
            self._abort_timer = self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)
        else:  # kept alive: the client may idle as long as uvicorn lets it, then must send its headers in time
            self._arm_header_deadline(self.timeout_keep_alive + self.header_timeout_s)

    def _arm_header_deadline(self, seconds: float | None = None) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(seconds or self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            log.warning(
                "closed a connection from %s: no complete request within %.0f s", self._peer, self.header_timeout_s
            )
            self.transport.close()


def guarded_protocol(header_timeout_s: float, max_per_client: int) -> type[GuardedH11Protocol]:
    """A protocol class with these limits (uvicorn instantiates the class it is given)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_per_client": max_per_client, "open_per_client": Counter()},
    )


class RateLimitedLog(logging.Filter):
    """At most ``burst`` lines of one kind (the same format string) per ``period_s``; then a count of the rest.

    A flood of refused requests would otherwise write one line each: the refusals are cheap, the disk is not.
    """

    def __init__(self, burst: int = 20, period_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period_s = burst, period_s
        self._window: dict[str, list[Any]] = {}  # kind → [window start, lines shown, lines suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        state = self._window.setdefault(str(record.msg), [now, 0, 0])
        if now - state[0] >= self.period_s:
            if state[2]:
                record.msg = f"{record.msg} ({state[2]} more like this in the last {self.period_s:.0f} s not shown)"
            state[:] = [now, 0, 0]
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        return True
