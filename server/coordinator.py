"""``fedrad-server start DIR [--resume]``: the coordinator's whole session, start to verdict.

Order and why:

1. Validate ``consortium.yaml`` and the registry first: nothing starts on a typo.
2. SuperLink on 127.0.0.1 (TLS, SuperNode auth, persistent ``DIR/state/superlink.db``,
   no runtime installs, telemetry off) and the fleet proxy on the public address:
   the Control API never faces the hospitals (docs/flower-notes.md).
3. Register every enrolled key (idempotent with the persistent database) and
   unregister keys that are no longer enrolled (key rotation, removed sites),
   *before* the proxy opens: a site connecting earlier would be refused (305).
4. Wait up to ``wait_for_sites_s`` for ``min_sites`` online, showing who is
   online; else name the missing sites and exit 1 (Flower's own
   ``strategy.start()`` would wait forever).
5. Stage the app with the consortium's run config as defaults and submit it
   (``run-dir`` = ``DIR/runs/<run-name>``; ``--resume`` reuses the last run dir
   with ``resume=true``).
6. Show progress from ``RUN_DIR/metrics.jsonl`` (written by the ServerApp)
   and end with the run's real status from the Control API, because ``flwr
   run`` exits 0 even when the run failed.

Everything started goes through one :class:`ProcessSet`: Ctrl-C and SIGTERM
(systemd, docker) stop the run and all processes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from server.consortium import ConsortiumConfig, load_consortium
from server.enrollment import EnrollmentError, load_registry, pki_dir, site_public_key, write_enrolled_keys
from server.fleet_proxy import start_fleet_proxy
from server.init_weights import prepare_init_weights
from server.pki import PkiError, server_tls
from server.statistics import STATS_FILE
from server.superlink import (
    ControlClient,
    NodeStatus,
    SuperLink,
    SuperLinkError,
    is_finished,
    stage_app,
    start_superlink,
    submit_run,
)
from shared.processes import (
    ProcessError,
    ProcessSet,
    executable,
    exit_on_sigterm,
    free_port,
    port_open,
    proc_id,
    run_cli,
)

if TYPE_CHECKING:
    from server.tracking import Tracker

STATE_DIR = "state"
RUNS_DIR = "runs"
STATS_DIR = "stats"
CROSSVAL_DIR = "crossval"
LOGS_DIR = "logs"
SERVER_JSON = "server.json"  # present while `start` runs: pid, loopback address (read by `status`)
ENROLLED_KEYS = "fleet-keys.pub"  # written at start from the registry: the only keys the fleet proxy lets through
CURRENT_RUN_JSON = "current-run.json"  # last submitted run: id, dir, status
SITE_NAMES_JSON = "site-names.json"  # RUN_DIR/site-names.json: {node id: enrolled site name} (update_site_names)
DASHBOARD = "dashboard"  # the process `start --dashboard-port` runs beside the session (logs/dashboard.log)
NAMES_EVERY_S = 5.0  # how often follow_run asks the SuperLink for new nodes to name
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class CoordinatorError(RuntimeError):
    """The session cannot go on; the message says why and what to do (exit code 1)."""


@dataclass
class StartOptions:
    resume: bool = False
    auto_resume: bool = False  # resume the last run if it did not complete, else start a new one (systemd)
    listen: str | None = None  # HOST:PORT the fleet proxy binds; default 0.0.0.0:<port of address>
    run_name: str | None = None
    poll_s: float = 1.0
    live: bool | None = None  # rich live display; default: only on a terminal
    mode: str = "train"  # "stats": ask every site for data statistics instead of training (DIR/stats/<run>/)
    crossval_model: Path | None = None  # mode "crossval": the model evaluated everywhere (DIR/crossval/<run>/)
    dashboard_port: int | None = None  # serve `fedrad-server dashboard` on 127.0.0.1:PORT beside the session


@dataclass
class RoundRow:
    round: int
    sites: str
    metrics: str
    seconds: str


@dataclass
class SessionResult:
    run_id: int
    run_dir: Path
    status: str
    details: str
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def last_run_dir(directory: Path) -> Path | None:
    """The most recently started run folder under ``DIR/runs`` (by name: names sort by time)."""
    runs = Path(directory) / RUNS_DIR
    dirs = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return dirs[-1] if dirs else None


def _pem_of(openssh_pub: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(Path(openssh_pub).read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sync_registrations(control: ControlClient, directory: Path) -> dict[str, str]:
    """Register every enrolled key; unregister SuperLink nodes whose key is no longer enrolled.

    Returns ``{site: "registered" | "already registered"}``.
    """
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    sites = load_registry(directory)
    wanted = {_pem_of(site_public_key(directory, s)).strip(): n for n, s in sites.items()}
    for node in control.nodes():
        pem = node.public_key_pem if isinstance(node.public_key_pem, bytes) else str(node.public_key_pem).encode()
        if node.status != "unregistered" and pem.strip() not in wanted:
            control._call(
                "UnregisterNode", UnregisterNodeRequest(node_id=node.node_id), f"unregistering node {node.name!r}"
            )  # noqa: SLF001
    result = {}
    for name, site in sites.items():
        node_id = control.register(site_public_key(directory, site), name)
        result[name] = "registered" if node_id is not None else "already registered"
    return result


def online_sites(control: ControlClient) -> dict[str, str]:
    """``{site name: status}`` as the SuperLink sees it (latest node per name)."""
    return {name: n.status for name, n in site_nodes(control).items()}


def site_nodes(control: ControlClient) -> dict[str, NodeStatus]:
    """``{site name: its SuperNode}`` as the SuperLink sees it (latest registered node per name)."""
    return {n.name: n for n in sorted(control.nodes(), key=lambda n: n.node_id) if n.status != "unregistered"}


def update_site_names(run_dir: Path, nodes: list[NodeStatus]) -> bool:
    """Add the SuperNodes' enrolled names to ``RUN_DIR/site-names.json`` (``{node id: site name}``); True if it
    changed. The ServerApp knows sites only by Flower node id (metrics.jsonl's ``failures``, ``site_metrics``);
    this file lets the dashboard name them after the server stopped. Entries are never dropped: a rotated
    key's old node id still names the rounds it answered."""
    path = Path(run_dir) / SITE_NAMES_JSON
    known = read_json(path)
    known = known if isinstance(known, dict) else {}
    names = {**known, **{str(n.node_id): n.name for n in nodes if n.name}}
    if names == known:
        return False
    _write_json(path, dict(sorted(names.items())))
    return True


def _sites_table(enrolled: list[str], status: dict[str, str], need: int, left: float) -> Table:
    online = sum(status.get(s) == "online" for s in enrolled)
    table = Table(title=f"Waiting for sites: {online}/{need} needed online ({left:.0f} s left)", title_justify="left")
    table.add_column("site")
    table.add_column("status")
    for s in enrolled:
        st = status.get(s, "not registered")
        table.add_row(s, f"[green]{st}[/]" if st == "online" else f"[yellow]{st}[/]")
    return table


def wait_for_sites(
    control: ControlClient, enrolled: list[str], need: int, timeout: float, console: Console, live: bool, poll_s: float
) -> list[str]:
    """Block until ``need`` enrolled sites are online; return them, or raise naming the missing ones."""
    deadline = time.monotonic() + timeout
    last_online: list[str] = []
    with Live(console=console, auto_refresh=False, transient=False) if live else _NoLive() as view:
        while True:
            status = online_sites(control)
            online = [s for s in enrolled if status.get(s) == "online"]
            left = deadline - time.monotonic()
            if live:
                view.update(_sites_table(enrolled, status, need, max(left, 0)), refresh=True)
            elif online != last_online:
                console.print(f"sites online: {', '.join(online) or 'none'} ({len(online)}/{need} needed)")
            last_online = online
            if len(online) >= need:
                return online
            if left <= 0:
                missing = [s for s in enrolled if s not in online]
                raise CoordinatorError(
                    f"only {len(online)} of the {need} sites needed came online within wait_for_sites_s="
                    f"{timeout:.0f} s. Missing: {', '.join(missing)}. Ask those sites to run "
                    "`fedrad-site start --config site.yaml` and check their logs (firewall, key, clock), "
                    "or lower min_sites in consortium.yaml."
                )
            time.sleep(poll_s)


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _fmt_metrics(row: dict[str, Any]) -> str:
    """``train loss=0.72 acc=0.49 | eval auc=0.81 | DP ε=2.98``: model metrics and ε (timings stay in metrics.jsonl)."""
    parts = []
    for label, keys in (("train", ("train", "train_metrics")), ("eval", ("eval", "evaluate", "eval_metrics"))):
        sub = next((row[k] for k in keys if isinstance(row.get(k), dict)), None)
        if not sub:
            continue
        shown = [
            f"{k.removeprefix('train-').removeprefix('eval-')}={v:.3g}"
            for k, v in sub.items()
            if isinstance(v, int | float)
            and not k.endswith("-s")
            and k not in ("sites", "num-examples", "held-out")
            and not k.endswith("examples")
        ]
        if shown:
            parts.append(f"{label} " + " ".join(shown))
    privacy = row.get("privacy")
    if isinstance(privacy, dict) and "epsilon" in privacy:
        per_image = " per image, largest site" if privacy.get("level") == "image" else ""
        parts.append(f"DP ε={privacy['epsilon']:.2f}{per_image} (δ={privacy.get('delta', 0):g})")
    return " | ".join(parts) or "-"


def round_row(row: dict[str, Any]) -> RoundRow:
    """One metrics.jsonl line as a display row (tolerant of missing keys)."""
    answered = row.get("sites_answered")
    failed = row.get("sites_failed")
    sites = str(len(answered) if isinstance(answered, list) else answered if answered is not None else "?")
    nfail = len(failed) if isinstance(failed, list) else failed or 0
    if nfail:
        sites += f" ({nfail} failed)"
    secs = row.get("seconds")
    return RoundRow(
        int(row.get("round", 0)), sites, _fmt_metrics(row), f"{secs:.1f}" if isinstance(secs, int | float) else "-"
    )


class MetricsTail:
    """New complete lines of ``metrics.jsonl`` since the last call (the ServerApp appends one per round)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0  # resume: show new rounds only

    def new_rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a half-written last line waits for the next call
        self.offset += end
        rows = []
        for line in data[:end].splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def _rounds_table(rows: list[RoundRow], total: int, status: str, elapsed: float) -> Table:
    table = Table(title=f"Run: {status}, {elapsed:.0f} s, {len(rows)}/{total} rounds", title_justify="left")
    for col in ("round", "sites answered", "aggregate metrics", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.round), r.sites, r.metrics, r.seconds)
    return table


def follow_run(
    link: SuperLink,
    control: ControlClient,
    ps: ProcessSet,
    run_id: int,
    run_dir: Path,
    total_rounds: int,
    console: Console,
    live: bool,
    poll_s: float,
    tracker: Tracker | None = None,
) -> SessionResult:
    """Show rounds as they finish; return when the run's status is ``finished:*``.

    Also keeps ``RUN_DIR/site-names.json`` up to date (:func:`update_site_names`) as sites join. A process
    that stops during the run ends the session with its log, except the dashboard (``--dashboard-port``),
    which is only watched: the run goes on without it.
    With a ``tracker`` (``tracking:`` in consortium.yaml) every committed round also goes to MLflow/TensorBoard."""
    tail = MetricsTail(run_dir / "metrics.jsonl")
    rows: list[RoundRow] = []
    raw: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_names = t0
    with Live(console=console, auto_refresh=False) if live else _NoLive() as view:
        while True:
            info = control.run(run_id)
            if time.monotonic() >= next_names:
                update_site_names(run_dir, control.nodes())
                next_names = time.monotonic() + NAMES_EVERY_S
            for r in tail.new_rows():
                raw.append(r)
                rows.append(round_row(r))
                if not live:
                    rr = rows[-1]
                    console.print(f"round {rr.round}/{total_rounds}: sites {rr.sites}, {rr.metrics}, {rr.seconds} s")
            if live:
                view.update(_rounds_table(rows, total_rounds, info["status"], time.monotonic() - t0), refresh=True)
            if tracker is not None:
                tracker.sync(run_dir)  # never raises: a tracking failure is a warning, not the run's end
            if is_finished(info["status"]):
                return SessionResult(run_id, run_dir, str(info["status"]), str(info.get("details") or ""), raw)
            for proc in list(ps.procs):
                if proc.poll() is not None and proc.name == DASHBOARD:
                    console.print(
                        f"[yellow]the dashboard stopped (exit {proc.returncode}); the run goes on. "
                        f"See {proc.log_path}[/]",
                        highlight=False,
                    )
                    ps.forget(proc)
                elif proc.poll() is not None:
                    raise CoordinatorError(
                        f"{proc.name} stopped (exit {proc.returncode}) during run {run_id}; see {proc.log_path}.\n"
                        f"{proc.log_tail(15)}"
                    )
            time.sleep(poll_s)


def _run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())


def start(directory: Path, opts: StartOptions | None = None, console: Console | None = None) -> SessionResult:
    """The whole ``fedrad-server start`` session; raises :class:`CoordinatorError` on a "no"."""
    opts = opts or StartOptions()
    console = console or Console()
    live = console.is_terminal if opts.live is None else opts.live
    directory = Path(directory).resolve()
    cfg: ConsortiumConfig = load_consortium(directory)
    sites = load_registry(directory)
    if len(sites) < cfg.min_sites:
        raise EnrollmentError(
            f"{directory}: {len(sites)} site(s) enrolled but min_sites is {cfg.min_sites}; "
            "enroll more with `fedrad-server enroll` or lower min_sites in consortium.yaml."
        )
    try:
        tls = server_tls(pki_dir(directory))
    except PkiError as exc:
        raise EnrollmentError(str(exc)) from None
    if opts.auto_resume and not opts.resume:
        last = last_run_dir(directory)
        current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON) or {}
        done = current.get("run_dir") == str(last) and current.get("status") == "finished:completed"
        opts.resume = last is not None and (last / "state.json").exists() and not done
    if opts.mode in ("stats", "crossval"):
        run_dir = directory / (STATS_DIR if opts.mode == "stats" else CROSSVAL_DIR) / (opts.run_name or _run_name())
    elif opts.resume:
        run_dir = last_run_dir(directory)
        if run_dir is None:
            raise EnrollmentError(f"{directory / RUNS_DIR}: no run to resume; start without --resume.")
    else:
        run_dir = directory / RUNS_DIR / (opts.run_name or _run_name())
        if run_dir.exists():
            raise EnrollmentError(f"{run_dir} exists; choose another run name or use --resume.")
    init_file = None
    if opts.mode == "train":  # a plain state dict is imported here, where its report is seen (server.init_weights)
        init_file = prepare_init_weights(
            cfg, run_dir, resume=opts.resume, say=lambda line: console.print(line, highlight=False)
        )
    listen = opts.listen or f"0.0.0.0:{cfg.port}"
    state = directory / STATE_DIR
    if opts.dashboard_port is not None and port_open("127.0.0.1", opts.dashboard_port):
        raise CoordinatorError(
            f"--dashboard-port {opts.dashboard_port}: something already listens on 127.0.0.1:{opts.dashboard_port} "
            "(another dashboard?); choose another port"
        )
    exit_on_sigterm()
    with ProcessSet(directory / LOGS_DIR) as ps:
        try:
            link = start_superlink(
                ps, tls=tls, port=free_port(), database=state / "superlink.db", flwr_home=state / "flwr-home"
            )
            with link.control() as control:  # before the proxy opens: a site must never meet an unknown key
                regs = sync_registrations(control, directory)
                orphans = stop_orphaned_runs(control)
            start_fleet_proxy(
                ps,
                listen=listen,
                upstream=link.address,
                certfile=tls.server_cert,
                keyfile=tls.server_key,
                ca_certfile=tls.ca_cert,
                enrolled_keys=write_enrolled_keys(directory, state / ENROLLED_KEYS),
                cwd=SOURCE_ROOT,
            )
        except SuperLinkError as exc:
            raise CoordinatorError(str(exc)) from None
        except ProcessError as exc:
            raise CoordinatorError(f"the server could not start (is port {listen} free?): {exc}") from None
        me = proc_id(os.getpid())
        _write_json(
            state / SERVER_JSON,
            {
                "pid": os.getpid(),
                "starttime": me[1] if me else None,
                "superlink": link.address,
                "listen": listen,
                "started_at": time.time(),
            },
        )
        if opts.dashboard_port is not None:
            start_dashboard(ps, directory, opts.dashboard_port, console)
        console.print(f"{len(regs)} enrolled site(s) registered with the SuperLink")
        for orphan in orphans:
            console.print(
                f"[yellow]stopped run {orphan}[/], left unfinished by a server process that died; its "
                "queued messages would have held the sites (its finished rounds are on disk)"
            )
        console.print(
            f"[bold]{cfg.name}[/]: server listening for sites on {listen} (TLS, site keys); "
            f"logs in {directory / LOGS_DIR}"
        )
        run_id = None
        tracker = None
        try:
            with link.control() as control:
                wait_for_sites(control, sorted(sites), cfg.min_sites, cfg.wait_for_sites_s, console, live, opts.poll_s)
                run_config = cfg.to_run_config(
                    run_dir=run_dir, resume=opts.resume, mode=opts.mode, crossval_model=opts.crossval_model or ""
                )
                if init_file is not None:
                    run_config["init-weights"] = str(init_file.resolve())
                run_dir.mkdir(parents=True, exist_ok=True)
                app_dir = stage_app(state / "app", SOURCE_ROOT, config_defaults=run_config)
                run_id = submit_run(link, app_dir)
                current = {
                    "run_id": run_id,
                    "run_dir": str(run_dir),
                    "resume": opts.resume,
                    "submitted_at": time.time(),
                    "status": "submitted",
                    "rounds": cfg.rounds,
                }
                if opts.mode == "train":  # what --auto-resume and `status` read (not stats/crossval sessions)
                    _write_json(state / CURRENT_RUN_JSON, current)
                console.print(
                    f"run {run_id} submitted{' (resume)' if opts.resume else ''}: {cfg.rounds} rounds of "
                    f"{cfg.strategy.name}, checkpoints in {run_dir}"
                )
                if opts.mode == "train" and cfg.tracking.enabled:  # after the submit: training never waits on it
                    tracker = _start_tracking(directory, cfg, run_dir, run_config, console)
                result = follow_run(
                    link, control, ps, run_id, run_dir, cfg.rounds, console, live, opts.poll_s, tracker=tracker
                )
                if tracker is not None:
                    _finish_tracking(tracker, directory, run_dir, result.status)
                if opts.mode == "stats":
                    _name_stats_sites(run_dir, control)
                elif opts.mode == "crossval":
                    _name_crossval_sites(run_dir, control)
                else:
                    _write_json(
                        state / CURRENT_RUN_JSON,
                        {**current, "status": result.status, "details": result.details, "finished_at": time.time()},
                    )
                if not result.ok:  # the ServerApp's traceback is only in `flwr log` (costs seconds: failures only)
                    path = _save_serverapp_log(link, run_id, directory)
                    if path is not None:
                        result.details += f" (ServerApp log: {path})"
                return result
        except SuperLinkError as exc:
            raise CoordinatorError(str(exc)) from None
        finally:
            if run_id is not None:
                _stop_if_running(link, run_id)
            if tracker is not None and not tracker.finished:  # Ctrl-C, SIGTERM, a process that died
                _finish_tracking(tracker, directory, run_dir, "interrupted")
            (state / SERVER_JSON).unlink(missing_ok=True)


def start_dashboard(ps: ProcessSet, directory: Path, port: int, console: Console) -> None:
    """``fedrad-server dashboard DIR --port PORT`` as a child of the session (loopback, read-only): it reads the
    same files as after the run and is stopped with the session's other processes. Not waited for: the run
    does not depend on it (it needs a few seconds of imports before it answers)."""
    proc = ps.start(
        DASHBOARD,
        [executable("fedrad-server"), "dashboard", str(directory), "--host", "127.0.0.1", "--port", str(port)],
        cwd=SOURCE_ROOT,
    )
    console.print(f"dashboard: http://127.0.0.1:{port}/ (read-only; log {proc.log_path})", highlight=False)


def _start_tracking(
    directory: Path, cfg: ConsortiumConfig, run_dir: Path, run_config: dict[str, Any], console: Console
) -> Tracker | None:
    """The run's trackers (:mod:`server.tracking`), opened; a backend that cannot open is a warning."""
    from server.tracking import Tracker

    tracker = Tracker.from_settings(
        cfg.tracking,
        say=lambda line: console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True),
        resend_hint=f"fedrad-server track {directory} --run {run_dir}",
    )
    try:
        tracker.start(run_dir, run_config, cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. the run folder unwritable: the run goes on without tracking
        tracker.say(f"warning: tracking could not start ({exc}); training goes on")
        return None
    opened = [b.name for b in tracker.backends if b.name not in tracker.failed]
    if opened:
        console.print(f"tracking: every round also goes to {', '.join(opened)}")
    return tracker


def _finish_tracking(tracker: Tracker, directory: Path, run_dir: Path, status: str) -> None:
    """The last rounds, the model card and the run's end to the trackers; never raises."""
    from server.tracking import run_model_card

    try:
        tracker.sync(run_dir)
        tracker.finish(run_model_card(directory, run_dir), status)
    except Exception as exc:  # noqa: BLE001 - tracking never decides the run's verdict
        tracker.say(f"warning: tracking could not finish ({exc})")
        tracker.finished = True


def _name_stats_sites(run_dir: Path, control: ControlClient) -> None:
    """Add the enrolled names to ``stats.json`` (the ServerApp knows only Flower node ids)."""
    path = run_dir / STATS_FILE
    stats = read_json(path)
    if stats is not None:
        _write_json(path, {**stats, "names": {str(n.node_id): n.name for n in control.nodes()}})


def _name_crossval_sites(run_dir: Path, control: ControlClient) -> None:
    """Enrolled names for the matrix's node ids: columns by site, rows ``local <site>``."""
    from server.crossval import CROSSVAL_FILE

    path = run_dir / CROSSVAL_FILE
    data = read_json(path)
    if data is None:
        return
    names = {str(n.node_id): n.name for n in control.nodes()}
    matrix = {
        (f"local {names.get(m.split('@', 1)[1], m)}" if m.startswith("local@") else m): {
            names.get(k, k): v for k, v in row.items()
        }
        for m, row in data["matrix"].items()
    }
    _write_json(
        path,
        {
            **data,
            "matrix": matrix,
            "sites": [names.get(s, s) for s in data["sites"]],
            "not_shared": {names.get(k, k): v for k, v in data.get("not_shared", {}).items()},
        },
    )


def _stop_if_running(link: SuperLink, run_id: int) -> None:
    """On Ctrl-C/SIGTERM, tell the SuperLink the run is stopped (its database outlives us)."""
    try:
        with link.control() as control:
            control.stop_if_running(run_id)
    except (SuperLinkError, OSError):
        pass


def stop_orphaned_runs(control: ControlClient) -> list[int]:
    """Stop the runs a killed server left unfinished in the SuperLink's database; return their ids.

    Why: a server killed without warning (power cut, SIGKILL) cannot stop its run, and its ServerApp may
    already have queued the next round's messages. A restarted SuperLink would hand those to the sites,
    whose ClientApps would then wait on a run nobody drives, and the new run's first round would time out.
    Stopping the old run drops its queued messages. Called before any site can connect. The killed run is
    the newest one, so Flower's list of recent runs always holds it."""
    stopped = []
    for run_id in sorted(control.unfinished_runs()):
        try:
            control.stop_run(run_id)
            stopped.append(run_id)
        except SuperLinkError:  # finished meanwhile, or already gone
            pass
    return stopped


def _save_serverapp_log(link: SuperLink, run_id: int, directory: Path) -> Path | None:
    """Keep the ServerApp's output (not in the SuperLink log) beside the other logs."""
    try:
        res = run_cli(
            [executable("flwr"), "log", str(run_id), link.connection, "--show"],
            env={"FLWR_HOME": str(link.flwr_home)},
            cwd=link.flwr_home,
            timeout=60,
        )
        text = res.stdout + res.stderr
    except Exception:  # noqa: BLE001 - a missing log must not hide the run's verdict
        return None
    path = directory / LOGS_DIR / f"serverapp-run-{run_id}.log"
    path.write_text(text)
    return path
