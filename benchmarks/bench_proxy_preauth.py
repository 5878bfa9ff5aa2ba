"""The fleet proxy under unauthenticated large bodies: its RSS before, at the peak and after, and what it answered.

Replays the outside review's attack (issue 21, finding 1): N parallel POSTs of a 63 MB body to
``/v1/fleet/push-object`` with no SuperNode signature, against a real ``python -m server.fleet_proxy`` process
over TLS (a throw-away CA; the upstream SuperLink address is a closed port, so nothing is forwarded). The
review measured 49 MB → 1,251 MB for 4 such bodies before the proxy checked signatures itself.

Run: ``python -m benchmarks.bench_proxy_preauth [--clients 4] [--megabytes 63] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from server.fleet_proxy import start_fleet_proxy
from server.pki import init_pki
from shared.processes import ProcessSet, free_port


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def attack(port: int, ca: Path, megabytes: int, answers: list[str]) -> None:
    """One unauthenticated client: headers, then the whole body as fast as the proxy takes it."""
    ctx = ssl.create_default_context(cafile=str(ca))
    size = megabytes * 1_000_000
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk, sent = b"x" * 1_000_000, 0
        try:
            while sent < size:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the proxy answered and closed: the rest of the body was never read
        try:
            answers.append(
                s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace") + f" after {sent // 1_000_000} MB sent"
            )
        except OSError as exc:
            answers.append(f"closed ({exc.__class__.__name__}) after {sent // 1_000_000} MB sent")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=63)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp) / "logs") as ps:
        tls = init_pki(Path(tmp) / "pki", "Bench", "127.0.0.1:9443")
        port = free_port()
        proc = start_fleet_proxy(
            ps,
            listen=f"127.0.0.1:{port}",
            upstream=f"127.0.0.1:{free_port()}",
            certfile=tls.server_cert,
            keyfile=tls.server_key,
            ca_certfile=tls.ca_cert,
        )
        time.sleep(1.0)
        baseline = rss_mb(proc.popen.pid)
        answers: list[str] = []
        threads = [
            threading.Thread(target=attack, args=(port, tls.ca_cert, args.megabytes, answers))
            for _ in range(args.clients)
        ]
        peak, t0 = baseline, time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(proc.popen.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        time.sleep(1.0)
        after = rss_mb(proc.popen.pid)
    result = {
        "clients": args.clients,
        "megabytes_each": args.megabytes,
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "peak_over_baseline_mb": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
        "answers": answers,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.clients} unauthenticated {args.megabytes} MB bodies to /v1/fleet/push-object, {seconds:.2f} s:")
    print(
        f"  proxy RSS {baseline:.1f} MB before, {peak:.1f} MB at the peak (+{peak - baseline:.1f}), {after:.1f} MB after"
    )
    for answer in answers:
        print(f"  {answer}")


if __name__ == "__main__":
    main()
