"""The outside review's attacks on the hospital-facing port, against a real loopback consortium, with figures.

Issue 21, findings 1-3. One site (SuperNode + worker) trains through a real fleet proxy over TLS; the
attacker connects from 127.0.0.2. Printed: the proxy's RSS before and at its peak under N unauthenticated
63 MB bodies; how many of M idle TLS connections from one address the proxy holds, and whether the site's
own new connections still get through meanwhile; how long slow-header connections live; what a 32 MB header
and 20,000 headers get; and the time of R federated rounds without and then under a slow-client attack
(the baseline measured in the same run).

Run: ``fedrad-bench proxy-attacks [--bodies 4] [--idle 500] [--slow 300] [--rounds 2] [--json]``
(Linux: reads /proc, binds 127.0.0.2).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.proxy_attacks import (
    big_unsigned_body,
    close_all,
    open_idle,
    poll_closed,
    request,
    rss_mb,
    tls_connect,
)
from deploy.loopback import REPO, LoopbackConsortium, start_loopback_consortium
from server.proxy_connections import HEADER_TIMEOUT_S, MAX_CONNECTIONS_PER_CLIENT
from server.superlink import stage_app, submit_run
from shared.processes import ProcessSet
from shared.synth import write_cohort

RUN_CONFIG = {
    "min-sites": 1,
    "round-timeout-s": 300,
    "evaluate-every": 100,
    "seed": 3,
    "strategy": "fedavg",
    "classes": "normal,nodule",
    "image-size": 32,
    "model": "smallcnn",
    "batch-size": 16,
    "local-epochs": 1,
    "consortium": "Bench",
}


def _rounds(lc: LoopbackConsortium, app_dir: Path, rounds: int) -> float:
    t0 = time.monotonic()
    run_dir = lc.root / "runs" / f"r{time.monotonic_ns()}"
    run_id = submit_run(lc.link, app_dir, {"num-server-rounds": rounds, "run-dir": str(run_dir)})
    with lc.link.control() as control:
        info = control.wait_for_run(run_id, timeout=120 + 120 * rounds, poll=0.5)
    if info["status"] != "finished:completed":
        with lc.link.control() as control:
            logs = control.logs(run_id)
        raise SystemExit(f"the run did not complete: {info['status']}\n{logs[-3000:]}")
    return time.monotonic() - t0


def memory_attack(port: int, ca: Path, pid: int, bodies: int) -> dict[str, Any]:
    baseline = rss_mb(pid)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(big_unsigned_body(port, ca, 63))) for _ in range(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)
    return {
        "bodies": bodies,
        "rss_before_mb": round(baseline, 1),
        "rss_peak_mb": round(rss_mb(pid, "VmHWM"), 1),
        "rss_after_mb": round(rss_mb(pid), 1),
        "answers": sorted(set(a.split(" after ")[0] for a in answers)),
    }


def connection_flood(port: int, ca: Path, idle: int) -> dict[str, Any]:
    held = [open_idle(port, ca) for _ in range(idle)]
    time.sleep(1.0)
    poll_closed(held)
    open_now = sum(h.closed_after_s is None for h in held)
    site_ok = 0
    for _ in range(10):  # the site's address is not the attacker's: its new connections still get in
        try:
            with tls_connect(port, ca, source="127.0.0.1", timeout=5):
                site_ok += 1
        except OSError:
            pass
    while any(h.closed_after_s is None for h in held):
        poll_closed(held)
        time.sleep(0.5)
    close_all(held)
    return {
        "attempted": idle,
        "held_at_once": open_now,
        "site_connections_ok": f"{site_ok}/10",
        "longest_held_s": round(max(h.closed_after_s or 0 for h in held), 1),
    }


def slow_clients_during_rounds(
    lc: LoopbackConsortium, app_dir: Path, port: int, ca: Path, slow: int, rounds: int
) -> dict[str, Any]:
    stop = threading.Event()
    lifetimes: list[float] = []

    def attacker() -> None:  # keeps re-opening slow-header connections for as long as the rounds run
        while not stop.is_set():
            held = [open_idle(port, ca, b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nX-a: ") for _ in range(slow)]
            while not stop.is_set() and any(h.closed_after_s is None for h in held):
                poll_closed(held, trickle=b"a")
                time.sleep(1.0)
            close_all(held)
            lifetimes.extend(h.closed_after_s for h in held if h.closed_after_s and h.closed_after_s > 1.0)

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        seconds = _rounds(lc, app_dir, rounds)
    finally:
        stop.set()
        thread.join()
    return {
        "slow_connections_per_wave": slow,
        "rounds_s": round(seconds, 1),
        "longest_slow_connection_s": round(max(lifetimes, default=0.0), 1),
    }


def header_abuse(port: int, ca: Path, pid: int) -> dict[str, Any]:
    before = rss_mb(pid)
    huge = b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 32_000_000 + b"\r\n\r\n"
    many = (
        b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
        + b"\r\n"
    )
    return {
        "32MB_header": request(port, ca, huge),
        "20000_headers": request(port, ca, many),
        "rss_growth_mb": round(rss_mb(pid) - before, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bodies", type=int, default=4, help="parallel unauthenticated 63 MB bodies")
    parser.add_argument("--idle", type=int, default=500, help="idle TLS connections from one address")
    parser.add_argument("--slow", type=int, default=300, help="slow-header connections per wave during the rounds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name, ProcessSet(Path(tmp_name) / "logs") as ps:
        tmp = Path(tmp_name)
        cohort = {s.name: s.path for s in write_cohort(tmp / "cohort", n_sites=1, unseen=0, scale=0.05, seed=4)}
        lc = start_loopback_consortium(ps, tmp, {"site-1": cohort["site-1"]}, image_size=32, name="Bench")
        lc.wait_until_online()
        assert lc.proxy_process is not None
        port, ca, pid = int(lc.proxy.rsplit(":", 1)[1]), lc.tls.ca_cert, lc.proxy_process.popen.pid
        app_dir = stage_app(tmp / "app", REPO, RUN_CONFIG)
        result: dict[str, Any] = {
            "header_timeout_s": HEADER_TIMEOUT_S,
            "max_per_client": MAX_CONNECTIONS_PER_CLIENT,
            "baseline_rounds_s": round(_rounds(lc, app_dir, args.rounds), 1),
            "memory": memory_attack(port, ca, pid, args.bodies),
            "flood": connection_flood(port, ca, args.idle),
            "slow": slow_clients_during_rounds(lc, app_dir, port, ca, args.slow, args.rounds),
            "headers": header_abuse(port, ca, pid),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m, f, s, h = result["memory"], result["flood"], result["slow"], result["headers"]
    print(
        f"fleet proxy under the review's attacks (header deadline {HEADER_TIMEOUT_S:g} s, {MAX_CONNECTIONS_PER_CLIENT} connections per client)"
    )
    print(
        f"  {m['bodies']} x 63 MB unsigned bodies: RSS {m['rss_before_mb']} MB before, peak {m['rss_peak_mb']} MB "
        f"(+{m['rss_peak_mb'] - m['rss_before_mb']:.1f}), after {m['rss_after_mb']} MB; answered {m['answers']}"
    )
    print(
        f"  {f['attempted']} idle TLS connections from one address: {f['held_at_once']} held at once, "
        f"closed after {f['longest_held_s']} s at most; the site's new connections meanwhile: {f['site_connections_ok']}"
    )
    print(
        f"  {args.rounds} rounds: {result['baseline_rounds_s']} s alone, {s['rounds_s']} s under {s['slow_connections_per_wave']} "
        f"slow-header connections a wave (ratio {s['rounds_s'] / result['baseline_rounds_s']:.2f}); "
        f"longest slow connection {s['longest_slow_connection_s']} s"
    )
    print(f"  32 MB header: {h['32MB_header']}; 20,000 headers: {h['20000_headers']}; RSS +{h['rss_growth_mb']} MB")


if __name__ == "__main__":
    main()
