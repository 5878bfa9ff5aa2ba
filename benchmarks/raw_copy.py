"""The yardstick for a round's transfer: the same bytes over plain HTTPS on the same loopback.

A tiny TLS server (Python's ``http.server`` with the consortium's server certificate, run as its own
process so it does not share the benchmark's interpreter lock) answers ``GET /<n>`` with n bytes and reads
and drops a ``POST`` body. :func:`raw_round_s` moves the bytes the way a round does: every site at once
downloads the global model, then uploads its update, each over one HTTPS connection verified against the
consortium's CA. No framing, hashing, storage or polling: the least any round could take.

Run: ``python -m benchmarks.raw_copy --listen 127.0.0.1:PORT --certfile server.crt --keyfile server.key``.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.processes import ManagedProcess, ProcessSet, free_port, wait_for_port

CHUNK = 1 << 20  # what each read or write moves: large enough that Python's loop costs nothing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _block = bytes(CHUNK)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        size = int(self.path.lstrip("/"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        view = memoryview(self._block)
        while size > 0:
            n = min(size, CHUNK)
            self.wfile.write(view[:n])
            size -= n

    def do_POST(self) -> None:  # noqa: N802
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            got = self.rfile.read(min(left, CHUNK))
            if not got:
                break
            left -= len(got)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return


def serve(listen: str, certfile: Path, keyfile: Path) -> None:
    """Serve until killed (blocking)."""
    host, _, port = listen.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    server = ThreadingHTTPServer((host, int(port)), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


def start_raw_server(ps: ProcessSet, certfile: Path, keyfile: Path, cwd: Path) -> tuple[ManagedProcess, int]:
    """The raw HTTPS server as a process of ``ps``; (process, port) once it listens."""
    import sys

    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.raw_copy", "--listen", f"127.0.0.1:{port}"]
    proc = ps.start("raw-https", [*cmd, "--certfile", str(certfile), "--keyfile", str(keyfile)], cwd=cwd)
    wait_for_port("127.0.0.1", port, 30, proc)
    return proc, port


def _one_site(port: int, ca: Path, down: int, up: bytes, errors: list[BaseException]) -> None:
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=300)
        conn.request("GET", f"/{down}")
        resp = conn.getresponse()
        got = 0
        while chunk := resp.read(CHUNK):
            got += len(chunk)
        if got != down:
            raise OSError(f"raw copy: downloaded {got} of {down} bytes")
        conn.request("POST", "/", body=up, headers={"Content-Type": "application/octet-stream"})
        conn.getresponse().read()
        conn.close()
    except BaseException as exc:  # noqa: BLE001 - reported by the caller
        errors.append(exc)


def raw_round_s(port: int, ca: Path, sites: int, down: int, up: int) -> float:
    """Seconds for ``sites`` clients at once to download ``down`` bytes and then upload ``up`` bytes each."""
    body = bytes(up)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_one_site, args=(port, ca, down, body, errors)) for _ in range(sites)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--certfile", required=True, type=Path)
    parser.add_argument("--keyfile", required=True, type=Path)
    args = parser.parse_args(argv)
    serve(args.listen, args.certfile, args.keyfile)


if __name__ == "__main__":
    main()
