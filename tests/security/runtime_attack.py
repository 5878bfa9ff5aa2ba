"""The review's attack on a site's Runtime API, against a real one-site loopback consortium.

While the site trains one real round, a local user (this uid, and uid
``nobody`` when run as root) polls ``acquire-task`` as Flower's SuperExec would
but without the secret, and watches /proc for task tokens on ClientApp command
lines; a claimed task or a token found is used at once (``pull-task-input``:
the server's message). The report says what each attempt got and whether the
real site still completed its round.

Run it alone for the figures (``PYTHONPATH=. python -m tests.security.runtime_attack``);
``tests/security/test_runtime_api.py`` asserts on the same report. It also
runs on a checkout from before the fix (plain-HTTP Runtime API, no secret),
which is where the "before" figures come from.
"""

from __future__ import annotations

import collections
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.loopback import REPO, start_loopback_consortium
from server.superlink import stage_app, submit_run
from shared.processes import ProcessSet
from shared.synth import write_cohort
from tests.security import runtime_probe as rp

SITE = "site-1"
ATTACK_EVERY_S = 0.1  # twice as often as the real SuperExec polls (0.2 s), so an open API loses the race
RUN_CONFIG = {
    "min-sites": 1,
    "round-timeout-s": 90,
    "evaluate-every": 1,
    "image-size": 32,
    "classes": "normal,nodule",
    "strategy": "fedavg",
    "batch-size": 16,
}


@dataclass
class AttackReport:
    port: int
    tls: bool
    log: Path
    secret: Path | None
    idle: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # who → (route, status) with no run
    during: dict[str, collections.Counter[int]] = field(default_factory=dict)  # who → acquire-task statuses
    stolen: list[tuple[str, int, int]] = field(default_factory=list)  # claimed tasks: (who, pull status, bytes)
    scan: dict = field(default_factory=dict)
    secret_read_by_nobody: str | None = None
    run_status: str = ""
    run_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"Runtime API 127.0.0.1:{self.port} ({'TLS' if self.tls else 'plain HTTP'})"]
        out += [f"  idle, as {who}: {codes}" for who, codes in self.idle.items()]
        out += [f"  during the run, acquire-task as {who}: {dict(c)}" for who, c in self.during.items()]
        out += [f"  claimed task used as {w}: pull-task-input {s}, {n} bytes" for w, s, n in self.stolen]
        out += [f"  /proc scan: {self.scan}", f"  secret read as nobody: {self.secret_read_by_nobody}"]
        out.append(f"  run: {self.run_status} after {self.run_s:.1f} s")
        return out


def attack(ps: ProcessSet, root: Path, *, nobody_python: str | None) -> AttackReport:
    """Start the consortium under ``root``, attack during one round, return what happened."""
    cohort = {s.name: s.path for s in write_cohort(root / "cohort", n_sites=1, unseen=0, scale=0.05, seed=2)}
    lc = start_loopback_consortium(ps, root, {SITE: cohort["site-1"]}, image_size=32)
    node = lc.sites[SITE].supernode
    tls = "--ssl-certfile" in node.cmd
    secret = Path(node.cmd[node.cmd.index("--superexec-auth-secret-file") + 1]) if tls else None
    report = AttackReport(port=rp.runtime_port(node.cmd), tls=tls, log=node.log_path, secret=secret)
    attackers: dict[str, dict] = {"this uid": {"uid": None, "python": None}}
    if nobody_python is not None:
        attackers["nobody"] = {"uid": rp.NOBODY, "python": nobody_python}
    app = stage_app(root / "app", REPO, {**RUN_CONFIG, "run-dir": str(root / "run")})
    lc.wait_until_online(120)

    idle = [
        rp.acquire_task_request(),
        rp.forged_acquire_task_request(),
        rp.task_route_request("/v1/runtime/pull-task-input"),
        rp.get_request("/docs"),
        rp.get_request("/openapi.json"),
    ]
    for who, as_ in attackers.items():
        report.idle[who] = [(r.path, r.status) for r in rp.probe(report.port, idle, tls=tls, **as_).replies()]
    if secret is not None and nobody_python is not None:
        report.secret_read_by_nobody = rp.read_as(rp.NOBODY, secret, nobody_python)

    stop = root / "stop-attack"
    t0 = time.monotonic()
    run_id = submit_run(lc.link, app, {"num-server-rounds": 1})
    pollers = {
        who: rp.probe(
            report.port,
            [rp.acquire_task_request()],
            tls=tls,
            repeat=100_000,
            every_s=ATTACK_EVERY_S,
            stop_file=stop,
            **as_,
        )
        for who, as_ in attackers.items()
    }
    scanner_as = attackers.get("nobody", attackers["this uid"])
    scanner = rp.scan(report.port, stop_file=stop, until_s=300, tls=tls, **scanner_as)
    try:
        with lc.link.control() as control:
            info = control.wait_for_run(run_id, timeout=200, poll=0.5)
        report.run_status, report.run_s = info["status"], time.monotonic() - t0
    finally:
        stop.touch()
    for who, poller in pollers.items():
        replies = poller.replies()
        report.during[who] = collections.Counter(r.status for r in replies if not r.path.startswith("claimed:"))
        report.stolen += [(who, r.status, int(r.body or 0)) for r in replies if r.path.startswith("claimed:")]
    report.scan = scanner.json()
    return report


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="fedrad-runtime-attack-"))
    os.chmod(root, 0o755)  # only the files' own modes stand between uid nobody and the site's secret
    nobody_python = rp.interpreter_for(rp.NOBODY) if os.getuid() == 0 else None
    with ProcessSet(root / "logs") as ps:
        report = attack(ps, root, nobody_python=nobody_python)
    print("\n".join(report.lines()))
    print(f"(files under {root})")


if __name__ == "__main__":
    main()
