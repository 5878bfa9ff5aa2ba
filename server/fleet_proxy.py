"""Hospital-facing TLS reverse proxy that forwards Flower's Fleet API and nothing else.

Why: in Flower 1.42 the SuperLink serves the Fleet API (SuperNodes), the
Control API (``flwr run``/``flwr supernode register``: unauthenticated in open
source, so whoever reaches it runs code on every site) and the Runtime API
(SuperExec/ServerApp) on ONE uvicorn HTTP port. They cannot be split onto
different ports, so FedRad binds the SuperLink to 127.0.0.1 and puts this proxy
on the public address. It terminates TLS with the consortium's server
certificate and forwards only ``POST /v1/fleet/<name>`` to the loopback
SuperLink over TLS (verified against the consortium CA). Everything else —
``/v1/control/*``, ``/v1/runtime/*``, ``/docs``, ``/openapi.json``, other
methods, odd encodings — gets 404 without touching the SuperLink.

The Fleet transport in 1.42 is protobuf over plain HTTP/1.1 POSTs (httpx on the
SuperNode, unary request/response, objects pushed/pulled in <= 5 MB chunks),
so buffering each body with a size cap is enough. Before a body is read, the
request must name a route Flower serves and carry a valid SuperNode signature
that was not seen before (:mod:`server.fleet_auth`); else 404 or 401, and the
body is never read. Bodies are capped per route (only object pushes need
megabytes) and at most ``MAX_BODIES_IN_FLIGHT`` are buffered at once. The
signed headers pass through untouched and the SuperLink checks them again.
Only Flower's own request headers are forwarded (``FORWARDED_HEADERS``); the
client's address is the socket's, never a header's. A refusal closes the
connection, so an unread body is not drained. Connection-level limits (header
deadline, per-client cap, TLS suites, quiet logs) are in
:mod:`server.proxy_connections`. Upstream outages answer 502, which SuperNodes retry.

Run: ``python -m server.fleet_proxy --listen 0.0.0.0:9443 --upstream 127.0.0.1:9092
--certfile server.crt --keyfile server.key --ca-certfile ca.crt``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.fleet_auth import DEFAULT_MAX_AGE_S, EnrolledKeys, EnrolledKeysError, ReplayGuard, auth_problem, route_limit
from server.proxy_connections import (
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS_PER_CLIENT,
    RateLimitedLog,
    body_deadline_s,
    guarded_protocol,
    harden_tls,
)
from shared.processes import ManagedProcess, ProcessSet, wait_for_port

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

FLEET_PATH = re.compile(rb"^/v1/fleet/[a-z][a-z-]{0,63}$")  # matched on the raw, undecoded path
MAX_BODIES_IN_FLIGHT = 16  # signed requests buffering a body at once; the rest wait (memory stays bounded)
MAX_HEADER_BYTES = 64 * 1024  # the request line and headers together; Flower's come to under 1 KiB
MAX_CONNECTIONS = 512  # open connections and tasks; beyond it uvicorn answers 503 at once
MAX_HEADERS = 64  # Flower sends about ten
# The SuperLink's own answer to a bad signature (flwr/superlink/routers/fleet/node_auth.py): the SuperNode
# then behaves as if the SuperLink had refused it (exit code 305, which `fedrad-site start` explains).
UNAUTHENTICATED = b'{"detail":"Invalid SuperNode authentication"}'
# What a Flower 1.42 SuperNode sends (flwr/supercore/protobuf/client.py, its auth and version interceptors).
FORWARDED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "user-agent",
        "flwr-public-key",
        "flwr-signature",
        "flwr-timestamp",
        "flwr-package-name",
        "flwr-package-version",
        "flwr-component-name",
        "x-flwr-client",
    }
)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade", "content-length"}
)
log = logging.getLogger("fedrad.fleet_proxy")


def is_fleet_request(method: str, raw_path: bytes, query: bytes = b"") -> bool:
    """A POST to one of Flower's Fleet routes, no query string, no encoded characters."""
    if method != "POST" or query or not FLEET_PATH.match(raw_path):
        return False
    return route_limit(raw_path.rsplit(b"/", 1)[1].decode("ascii")) is not None


def _refuse(status: int, text: bytes, media_type: str = "text/plain") -> Response:
    """A refusal that closes the connection: whatever body the client still sends is never read."""
    from starlette.responses import Response

    return Response(text, status_code=status, media_type=media_type, headers={"connection": "close"})


def build_app(
    upstream: str,
    ca_certfile: Path | None,
    *,
    timeout: float = 120.0,
    enrolled_keys: Path | None = None,
    max_signature_age_s: float = DEFAULT_MAX_AGE_S,
) -> Callable:
    """ASGI app forwarding Fleet calls to ``https://<upstream>`` (plain http if ``ca_certfile`` is None).

    ``enrolled_keys``: an OpenSSH ``.pub``-lines file; a signed request from any other key is refused.
    """
    import httpx
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response

    verify: ssl.SSLContext | bool = False
    scheme = "http"
    if ca_certfile is not None:
        verify = ssl.create_default_context(cafile=str(ca_certfile))
        scheme = "https"
    base = f"{scheme}://{upstream}"
    client = httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=False)
    replays = ReplayGuard(max_age_s=max_signature_age_s)
    enrolled = EnrolledKeys(enrolled_keys) if enrolled_keys is not None else None
    bodies = asyncio.Semaphore(MAX_BODIES_IN_FLIGHT)

    async def proxy(request: Request) -> Response:
        scope = request.scope
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        peer = request.client.host if request.client else "?"  # the socket's address: headers cannot set it
        if not is_fleet_request(request.method, raw_path, scope.get("query_string", b"")):
            log.warning("refused %s %r from %s", request.method, raw_path[:200], peer)
            return _refuse(404, b"not found\n")
        if len(scope["headers"]) > MAX_HEADERS:
            log.warning("refused %r from %s: more than %d headers", raw_path[:200], peer, MAX_HEADERS)
            return _refuse(431, b"too many headers\n")
        problem = auth_problem(request.headers, replays, enrolled=enrolled)
        if problem is not None:  # refused on its headers alone: the body is never read
            log.warning("refused unauthenticated %r from %s: %s", raw_path[:200], peer, problem)
            return _refuse(401, UNAUTHENTICATED, "application/json")  # what the SuperLink itself answers
        limit = route_limit(raw_path.rsplit(b"/", 1)[1].decode("ascii"))
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _refuse(413, b"request too large\n")
        async with bodies:
            chunks, size = [], 0
            try:
                async with asyncio.timeout(body_deadline_s(int(declared) if declared else None, limit)):
                    async for chunk in request.stream():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            return _refuse(413, b"request too large\n")
            except TimeoutError:
                log.warning("closed %r from %s: body not received in time (%d bytes)", raw_path[:200], peer, size)
                return _refuse(408, b"body not received in time\n")
            except ClientDisconnect:
                log.info("client %s disconnected while sending %r", peer, raw_path[:200])
                return _refuse(400, b"")
            body = b"".join(chunks)
        del chunks
        headers = [(k, v) for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS]
        headers.append(("x-forwarded-for", peer))
        try:
            upstream_req = client.build_request("POST", base + raw_path.decode("ascii"), headers=headers, content=body)
            resp = await client.send(upstream_req, stream=True)
            try:
                payload = b"".join([part async for part in resp.aiter_raw()])
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            log.warning("upstream %s unavailable: %s", base, exc)
            return Response(b"superlink unavailable\n", status_code=502, media_type="text/plain")
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(payload, status_code=resp.status_code, headers=out_headers)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        """Plain ASGI: one handler for every path, so refusals look identical (404)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # websockets etc.: refuse
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        response = await proxy(Request(scope, receive))
        await response(scope, receive, send)

    return app


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def serve(
    listen: str,
    upstream: str,
    certfile: Path,
    keyfile: Path,
    ca_certfile: Path | None,
    *,
    enrolled_keys: Path | None = None,
    max_signature_age_s: float = DEFAULT_MAX_AGE_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
) -> None:
    """Serve the proxy until interrupted (blocking)."""
    import uvicorn

    host, port = _split(listen)
    config = uvicorn.Config(
        build_app(upstream, ca_certfile, enrolled_keys=enrolled_keys, max_signature_age_s=max_signature_age_s),
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,  # the client's address is the socket's; X-Forwarded-For from a client is not trusted
        timeout_keep_alive=30,
        # h11 (not httptools) enforces a header size limit; the subclass adds a header deadline and a per-client cap
        http=guarded_protocol(header_timeout_s, max_per_client),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
    )
    config.load()
    harden_tls(config.ssl)
    uvicorn.Server(config).run()


def proxy_command(
    listen: str,
    upstream: str,
    certfile: Path,
    keyfile: Path,
    ca_certfile: Path,
    enrolled_keys: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Command line that runs this module as a separate process (``extra``: more of :func:`main`'s flags)."""
    import sys

    keys = ["--enrolled-keys", str(enrolled_keys)] if enrolled_keys is not None else []
    return [
        sys.executable,
        "-m",
        "server.fleet_proxy",
        "--listen",
        listen,
        "--upstream",
        upstream,
        "--certfile",
        str(certfile),
        "--keyfile",
        str(keyfile),
        "--ca-certfile",
        str(ca_certfile),
        *keys,
        *extra,
    ]


def start_fleet_proxy(
    ps: ProcessSet,
    *,
    listen: str,
    upstream: str,
    certfile: Path,
    keyfile: Path,
    ca_certfile: Path,
    enrolled_keys: Path | None = None,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start the proxy through ``ps`` and wait until it listens.

    ``cwd`` must let ``python -m server.fleet_proxy`` import FedRad (repo root or installed package).
    """
    cmd = proxy_command(listen, upstream, certfile, keyfile, ca_certfile, enrolled_keys, extra)
    proc = ps.start("fleet-proxy", cmd, cwd=cwd)
    host, port = _split(listen)
    wait_for_port("127.0.0.1" if host in ("0.0.0.0", "") else host, port, timeout, proc)
    return proc


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (``python -m server.fleet_proxy``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT hospitals connect to")
    parser.add_argument("--upstream", required=True, help="loopback HOST:PORT of the SuperLink")
    parser.add_argument("--certfile", required=True, type=Path)
    parser.add_argument("--keyfile", required=True, type=Path)
    parser.add_argument("--ca-certfile", type=Path, help="CA that signed the SuperLink certificate")
    parser.add_argument("--enrolled-keys", type=Path, help="OpenSSH public keys of the enrolled sites, one a line")
    parser.add_argument("--max-signature-age", type=float, default=DEFAULT_MAX_AGE_S, help="seconds (clock skew)")
    parser.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT_S, help="seconds to send the headers")
    parser.add_argument("--max-per-client", type=int, default=MAX_CONNECTIONS_PER_CLIENT, help="open connections")
    args = parser.parse_args(argv)
    # No timestamps here: the supervisor (ProcessSet, journald, docker) stamps each line.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimitedLog())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per forwarded call is noise
    try:
        serve(
            args.listen,
            args.upstream,
            args.certfile,
            args.keyfile,
            args.ca_certfile,
            enrolled_keys=args.enrolled_keys,
            max_signature_age_s=args.max_signature_age,
            header_timeout_s=args.header_timeout,
            max_per_client=args.max_per_client,
        )
    except EnrolledKeysError as exc:
        raise SystemExit(f"fleet proxy: {exc}") from None


if __name__ == "__main__":
    main()
