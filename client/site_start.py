"""``fedrad-site start --config site.yaml``: join the consortium and train when asked.

Order and why:

1. Validate site.yaml (:class:`client.site_config.SiteFileConfig`) and the
   credentials (CA file, unencrypted OpenSSH EC key) before any connection,
   then probe the server (:func:`client.tls_check.probe_server`): a
   certificate this site cannot trust stops here; an unreachable server is
   named once (:mod:`client.connection_watch`) and the SuperNode retries.
2. Check the data exactly as ``fedrad-site check`` does and refuse to start
   when it cannot train: a site that joins and then fails every round only
   slows the consortium down (the round waits up to ``round_timeout_s``).
3. Start the site's warm worker (client/site_worker.py: torch, the model and
   the data stay loaded between rounds; restarted with backoff if it dies,
   :mod:`shared.supervision`) and Flower's
   SuperNode (client/supernode.py) with the site key, the consortium CA, the
   server address and node config ``site-config`` / ``site-name`` /
   ``worker-socket`` (the per-message ClientApp forwards to the worker).

Restart after a crash: Flower refuses to activate a key that it still
counts as online (exit code 305, "Failed to activate SuperNode") until the
old session's heartbeats lapse (~60 s). A refusal is therefore retried every
10 s for up to 150 s before it is reported; a key that is really not
registered is still reported, just 150 s later.

Reconnection: the SuperNode is started without ``--max-retries`` /
``--max-wait-time``, so Flower retries every Fleet call forever with capped
exponential backoff (verified in docs/flower-notes.md: SuperLink killed and
restarted → "Connection successful after 4.95 s and 5 tries", the node stays
registered and online). Network faults therefore need no action here; this
command only ends when the SuperNode itself exits, and then translates
Flower's log-only exit code (e.g. 305: key not registered) into a message.
Under systemd/docker, ``Restart=on-failure`` restarts it after such an exit.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from client.approval import approvals_path, load_approvals
from client.connection_watch import ConnectionWatch
from client.site_config import SiteFileConfig, load_site_file, site_node_config
from client.site_worker import start_site_worker
from client.supernode import (
    EXIT_REASONS,
    SuperNodeError,
    flower_exit_code,
    start_supernode,
)
from client.tls_check import CA_FILE, CERT, probe_server
from shared.config import ConfigError
from shared.keys import SiteKeyError, check_private_key
from shared.logs import LogFollower
from shared.processes import ManagedProcess, ProcessSet, exit_on_sigterm, free_port
from shared.supervision import Supervised

# SuperNode log lines worth showing the operator (the rest stays in the log file). Flower's
# "Connection attempt failed, retrying" lines are not among them: ConnectionWatch says why instead.
_SHOW = re.compile(
    r"(Starting Flower SuperNode|SuperNode ID|Connection successful|Receiving: \w+ message|Sending: \w+|"
    r"Giving up|Exit Code|ERROR|Failed)",
    re.IGNORECASE,
)
LOG_TAIL_LINES = 400  # of a SuperNode's log kept in memory to explain its exit
HINTS: dict[int, str] = {
    305: (
        "the server refused this site: its key is not registered (ask the coordinator to enroll site.pub and "
        "restart the server, and compare fingerprints), the server is unreachable, or this machine's clock is "
        "more than 5 s ahead of the server (enable NTP)."
    ),
    302: "private_key in site.yaml is not an unencrypted OpenSSH EC key; make one with `fedrad-site keygen`.",
    303: "a site key needs TLS; ca_cert must be set in site.yaml.",
}


# Flower refuses to activate a node whose key is still marked online: after a crash (no clean
# deactivate) that lasts until the SuperLink's heartbeat check expires it (30 s interval, patience 2).
REFUSED_RETRY_S = 150.0
REFUSED_RETRY_EVERY_S = 10.0


class SiteStartError(RuntimeError):
    """The SuperNode stopped; the message says why in the operator's words (exit code 1)."""


def preflight(config: Path) -> SiteFileConfig:
    """Validate site.yaml, the credentials and the device it asks for; every problem is a :class:`ConfigError`
    naming the key/file (a ``device: cuda`` without a usable GPU stops here, not in the worker)."""
    from shared.hardware import site_hardware

    cfg = load_site_file(config)
    site_hardware(cfg, config)
    if not Path(cfg.ca_cert).is_file():
        raise ConfigError(f"{config}: ca_cert {cfg.ca_cert} not found (copy ca.crt from the site bundle)")
    try:
        check_private_key(Path(cfg.private_key))
    except SiteKeyError as exc:
        raise ConfigError(f"{config}: private_key: {exc}") from None
    return cfg


def check_data(cfg: SiteFileConfig) -> tuple[bool, str]:
    """``fedrad-site check`` on the site's data: (ok, verdict).

    A site.yaml without ``labels`` is a segmentation-only site: its check is the export's CT/MR series or its
    images, each with their labels (:func:`shared.site_data.check_label_free_site`), not 2 labelled classes;
    one with ``findings`` has a multi-label CSV, checked per finding (:mod:`shared.tasks.multilabel.data`).
    """
    if cfg.labels is None:
        from shared.site_data import check_label_free_site

        return check_label_free_site(cfg.data_config())
    if cfg.findings:  # a multi-label CSV (one column per finding)
        from shared.tasks.multilabel.data import check_multilabel_site

        result = check_multilabel_site(cfg.data_config(), list(cfg.findings))
        return result.ok, result.verdict()
    from shared.site_data import check_site

    result = check_site(cfg.data_config())
    return result.ok, result.verdict()


def explain_exit(log_text: str, returncode: int | None) -> str:
    """The operator's sentence for a stopped SuperNode."""
    code = flower_exit_code(log_text)
    if code is None and returncode == 0 and "terminated gracefully" in log_text:
        # Flower answers an UNAUTHENTICATED reply (e.g. "Invalid timestamp") by sending itself SIGINT: exit 0,
        # no error in the log. Measured: a site clock 30 s ahead of the server's ends exactly like this.
        return (
            "the SuperNode shut itself down after the server refused a signed request (Flower logs no reason): "
            "this site's key is not enrolled (or was revoked): ask the coordinator to compare fingerprints; "
            "or this machine's clock is off (the server allows 5 s ahead and 90 s behind; enable NTP)"
        )
    if code is None:
        return f"the SuperNode exited with status {returncode} (no Flower exit code in its log)"
    reason = HINTS.get(code) or EXIT_REASONS.get(code) or "see the log"
    return f"the SuperNode stopped with Flower exit code {code}: {reason}"


def run_site(
    config: Path,
    *,
    console: Console | None = None,
    skip_check: bool = False,
    max_retries: int | None = None,
    on_started: Callable[[Path], None] | None = None,
) -> None:
    """Run the site until interrupted; raise :class:`SiteStartError` when the SuperNode stops by itself."""
    console = console or Console()
    config = Path(config).resolve()
    cfg = preflight(config)

    def warn(line: str) -> None:
        console.print(line, style="yellow", markup=False, highlight=False)

    watch = ConnectionWatch(cfg.server_address, Path(cfg.ca_cert), config, warn)
    probe = probe_server(cfg.server_address, Path(cfg.ca_cert))
    if probe.kind in (CERT, CA_FILE):  # the bundle or the server must change: retrying cannot help
        raise SiteStartError(f"not connecting: {probe.advice(config)}")
    if not skip_check:
        console.print(f"checking data in {cfg.data} …")
        ok, verdict = check_data(cfg)
        if not ok:
            raise SiteStartError(
                f"data check failed, not joining the consortium: {verdict}. "
                f"Run `fedrad-site check --config {config}` for the details and fix the data or labels first."
            )
        console.print(f"data check: {verdict}")
    from shared.hardware import site_hardware

    console.print(f"trains on: {site_hardware(cfg, config).describe()}", highlight=False)
    work = Path(cfg.work_dir or config.parent / "work")
    if not load_approvals(approvals_path(work)):
        console.print(
            "[yellow]warning:[/] no FedRad code is approved at this site, so every run will be refused; "
            f"review and approve with `fedrad-site approve --config {config}`"
        )
    from client.audit_site import start_audit  # audit log: crash traces repaired, tampering stops the start

    for note in start_audit(config, cfg):
        console.print(note)
    if not probe.ok:  # down or blocked now: say why before Flower's first retry line
        watch.report(probe)
    exit_on_sigterm()
    restrict_umask()
    with ProcessSet(work / "logs") as ps:
        first_worker, socket_path = start_site_worker(ps, cfg.site_name, config)
        worker = Supervised(
            ps,
            lambda: start_site_worker(ps, cfg.site_name, config, socket_path=socket_path)[0],
            label="site worker",
            say=warn,
            proc=first_worker,
            down_note="; meanwhile each message is computed by the ClientApp itself (slower)",
        )
        node_config = site_node_config(config, cfg, socket_path)
        refused_since: float | None = None
        while True:
            try:
                proc = start_supernode(
                    ps,
                    cfg.site_name,
                    superlink=cfg.server_address,
                    ca_cert=Path(cfg.ca_cert),
                    private_key=Path(cfg.private_key),
                    node_config=node_config,
                    work_dir=work,
                    runtime_port=free_port(),
                    max_retries=max_retries,
                )
            except SuperNodeError as exc:
                raise ConfigError(str(exc)) from None
            console.print(
                f"site {cfg.site_name!r} connecting to {cfg.server_address} (log: {proc.log_path}); Ctrl-C to stop"
            )
            if on_started is not None:
                on_started(proc.log_path)
            connected, text = _follow(proc, worker, watch, console)
            for done in [p for p in ps.procs if p is proc or p.name == f"superexec-{cfg.site_name}"]:
                ps.forget(done)  # it and its SuperExec stop now; a retry adds no entry to the process list
            now = time.monotonic()
            if connected:  # it was connected: a refusal now starts a new retry window
                refused_since = None
            if flower_exit_code(text) == 305 and max_retries is None:
                refused_since = refused_since or now
                if now - refused_since < REFUSED_RETRY_S:
                    console.print(
                        f"the server refused the connection (Flower exit code 305); retrying in {REFUSED_RETRY_EVERY_S:.0f} s "
                        f"(for up to {REFUSED_RETRY_S:.0f} s): a site restarted right after a crash is refused until "
                        "the server notices its old connection is gone (~60 s)"
                    )
                    time.sleep(REFUSED_RETRY_EVERY_S)
                    continue
            raise SiteStartError(explain_exit(text, proc.returncode) + f" (log: {proc.log_path})")


def restrict_umask(mask: int = 0o027) -> int:
    """Add ``mask`` to this process's umask (inherited by every child); return the new umask.

    Why: what the site writes while it runs (SuperNode and worker logs, the audit log, privacy ledgers,
    unpacked code) must not be readable by other local users: files 0640 and folders 0750 at most, readable
    by the service account's group (docs/runbook.md, "What the site host must be"). Never loosens.
    """
    old = os.umask(mask)
    os.umask(old | mask)
    return old | mask


def _follow(proc: ManagedProcess, worker: Supervised, watch: ConnectionWatch, console: Console) -> tuple[bool, str]:
    """Echo the SuperNode's log until it exits, keeping the worker up; (it connected, its last lines).

    The log is appended across restarts and rotated when large, so it is read
    with a :class:`LogFollower` from where this SuperNode's output starts.
    """
    follower = LogFollower(proc.log_path, proc.log_start)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    connected = False

    def echo() -> None:
        nonlocal connected
        for line in follower.read_lines():
            tail.append(line)
            connected = connected or "SuperNode ID" in line
            if not watch.on_line(line) and _SHOW.search(line):
                console.print(line.strip(), highlight=False, markup=False)

    try:
        while proc.poll() is None:
            echo()
            worker.check()
            time.sleep(0.5)
        echo()
    finally:
        follower.close()
    return connected, "\n".join(tail)
