"""Start the Flower SuperLink and drive it through Flower's own CLI (``flwr``).

Verified against Flower 1.42 (see docs/flower-notes.md):

* The SuperLink serves Fleet, Control and Runtime APIs on ONE HTTPS port
  (uvicorn, ``--host``/``--port``). FedRad binds it to 127.0.0.1 and exposes
  only the Fleet routes through :mod:`server.fleet_proxy`.
* ``--enable-supernode-auth`` requires TLS; sites are registered through the
  Control API (``flwr supernode register PUB CONN`` or
  :meth:`ControlClient.register`) — the Fleet API refuses self-registration
  when auth is on.
* ``--disable-runtime-dependency-installation`` stops the per-run ``uv sync``;
  telemetry/update checks are off through :func:`shared.processes.child_env`.
* ``flwr`` reads connections from ``$FLWR_HOME/config.toml``; FedRad points
  ``FLWR_HOME`` at a folder it owns so nothing lands in ``~/.flwr``.
* ``flwr ... --format json`` exits 0 even on failure: the JSON ``success``
  field is the truth, and a run's outcome is its status (``flwr ls`` or
  :meth:`ControlClient.run`), never ``flwr run``'s exit code.
* Registration, node listing and run status go through :class:`ControlClient`
  (in-process, ~0.1 s per call) instead of the CLI (~3 s of CPU per call).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.pki import ServerTls
from shared.code_identity import code_files
from shared.processes import ManagedProcess, ProcessSet, executable, run_cli, wait_for_port

CONNECTION = "fedrad"  # SuperLink connection name in $FLWR_HOME/config.toml
FAB_PYPROJECT_TABLES = ("build-system", "project")  # plus tool.flwr.app; everything else stays out


class SuperLinkError(RuntimeError):
    """SuperLink or ``flwr`` CLI failure; the message says what failed and includes Flower's words."""


@dataclass
class SuperLink:
    """A running SuperLink and how to reach its (loopback-only) Control API."""

    proc: ManagedProcess
    address: str  # 127.0.0.1:PORT — Fleet+Control+Runtime, never exposed directly
    flwr_home: Path
    ca_cert: Path
    connection: str = CONNECTION

    def control(self) -> ControlClient:
        """An in-process Control API client (use as a context manager)."""
        return ControlClient(self.address, self.ca_cert)


def superlink_command(
    tls: ServerTls, *, port: int, database: Path | None, host: str = "127.0.0.1", simulation: bool = False
) -> list[str]:
    """The ``flower-superlink`` command line FedRad uses (TLS, node auth, persistent state, no installs).

    ``simulation``: Flower's simulation runtime (``--simulation``: no Fleet API, runs are
    simulated by ``flwr-simulation``, so no SuperNode auth); ``database`` None: state in memory.
    """
    return [
        executable("flower-superlink"),
        "--ssl-certfile",
        str(tls.server_cert),
        "--ssl-keyfile",
        str(tls.server_key),
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        *(["--simulation"] if simulation else ["--enable-supernode-auth"]),
        *(["--database", str(database)] if database is not None else []),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--isolation",
        "subprocess",
    ]


def write_cli_config(flwr_home: Path, address: str, ca_cert: Path, name: str = CONNECTION) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one TLS connection ``name`` (made the default)."""
    import tomli_w

    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    doc = {
        "superlink": {"default": name, name: {"address": address, "root-certificates": str(Path(ca_cert).resolve())}}
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def start_superlink(
    ps: ProcessSet,
    *,
    tls: ServerTls,
    port: int,
    database: Path | None,
    flwr_home: Path,
    timeout: float = 60.0,
    simulation: bool = False,
    env: dict[str, str] | None = None,
) -> SuperLink:
    """Start the SuperLink on 127.0.0.1:``port``, wait until it listens, configure the ``flwr`` CLI.

    ``env`` is added to its environment, which Flower's own children (SuperExec,
    ``flwr-serverapp`` / ``flwr-simulation`` and Ray's workers) inherit.
    """
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    if database is not None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    proc = ps.start(
        "superlink",
        superlink_command(tls, port=port, database=database, simulation=simulation),
        env={**(env or {}), "FLWR_HOME": str(flwr_home)},
        cwd=flwr_home,
    )
    address = f"127.0.0.1:{port}"
    wait_for_port("127.0.0.1", port, timeout, proc)
    write_cli_config(flwr_home, address, tls.ca_cert)
    return SuperLink(proc=proc, address=address, flwr_home=flwr_home, ca_cert=tls.ca_cert)


def flwr_json(link: SuperLink, args: list[str], *, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` against ``link``; return the parsed JSON or raise.

    Runs with ``cwd=FLWR_HOME``: in a folder holding a pyproject.toml with
    ``[tool.flwr.federations]`` Flower would migrate (rewrite) that file.
    """
    cmd = [executable("flwr"), *args, "--format", "json"]
    res = run_cli(cmd, env={"FLWR_HOME": str(link.flwr_home)}, cwd=link.flwr_home, timeout=timeout)
    starts = [m.start() for m in re.finditer(r"^\{", res.stdout, re.MULTILINE)]  # JSON follows any banner
    try:
        data = json.loads(res.stdout[starts[-1] :]) if starts else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise SuperLinkError(
            f"`flwr {' '.join(args)}` gave no JSON (exit {res.returncode}).\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    return data


def _check(data: dict[str, Any], what: str) -> dict[str, Any]:
    if not data.get("success", False):
        raise SuperLinkError(f"{what} failed: {data.get('error-message', data)}")
    return data


@dataclass(frozen=True)
class NodeStatus:
    """One registered SuperNode as the SuperLink sees it."""

    node_id: int
    name: str
    status: str  # "registered" (never connected), "online", "offline", "unregistered"
    public_key_pem: str
    last_activated_at: str
    last_seen: str = ""  # ISO time (UTC) of its last heartbeat (online) or of going offline; "" if never seen


def last_seen(info: Any) -> str:
    """When the SuperLink last heard from a node (a Flower ``NodeInfo``): online, its last heartbeat (the SuperLink
    keeps ``online_until`` = heartbeat + patience × interval); offline, when it was marked so; "" when never."""
    from datetime import UTC, datetime

    from flwr.common.constant import HEARTBEAT_PATIENCE

    try:
        if info.status == "online" and info.HasField("online_until"):
            beat = float(info.online_until) - HEARTBEAT_PATIENCE * float(info.heartbeat_interval)
            return datetime.fromtimestamp(beat, tz=UTC).isoformat(timespec="seconds")
        if info.HasField("last_deactivated_at"):
            return str(info.last_deactivated_at)
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    return ""


def is_finished(status: str) -> bool:
    """Whether a run status from the Control API (``finished:completed``, ``finished:stopped``, ...) is final."""
    return str(status).startswith("finished")


class ControlClient:
    """In-process client for the SuperLink's Control API (loopback only).

    Why not the ``flwr`` CLI for everything: each ``flwr`` invocation costs
    2-4 s of CPU (imports), so polling "who is online" or a run's status every
    few seconds would take a core away from training on a small server; these
    calls take ~0.1 s. It uses Flower's own ``ControlHttpClient`` and the
    Control API protobufs (``flwr`` is pinned, so this internal client is
    stable for FedRad). Runs are still submitted with ``flwr run`` (it builds
    the FAB).
    """

    def __init__(self, address: str, ca_cert: Path) -> None:
        from flwr.supercore.control import ControlHttpClient

        self.address = address
        self._client = ControlHttpClient.from_server_address(
            address, insecure=False, root_certificates=Path(ca_cert).read_bytes(), interceptors=[]
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, what: str) -> Any:
        import httpx

        try:
            return getattr(self._client, method)(request)
        except httpx.HTTPStatusError as exc:
            raise SuperLinkError(
                f"{what}: SuperLink answered {exc.response.status_code} {exc.response.text[:300]}"
            ) from exc
        except httpx.HTTPError as exc:
            raise SuperLinkError(f"{what}: SuperLink at {self.address} unreachable ({exc})") from exc

    def register(self, public_key: Path, name: str) -> int | None:
        """Register a site's OpenSSH public key; return its node id, or None if already registered.

        "Already registered" (HTTP 412, Flower code 23) is normal after a
        restart with a persistent database.
        """
        import httpx
        from cryptography.hazmat.primitives import serialization
        from flwr.proto.control_pb2 import RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        key = serialization.load_ssh_public_key(Path(public_key).read_bytes())
        request = RegisterNodeRequest(public_key=public_key_to_bytes(key), name=name)
        try:
            return int(self._client.RegisterNode(request).node_id)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 412 and '"code":23' in exc.response.text.replace(" ", ""):
                return None
            raise SuperLinkError(f"registering {public_key} for site {name!r}: {exc.response.text[:300]}") from exc

    def nodes(self) -> list[NodeStatus]:
        """Every SuperNode the SuperLink knows, with its registered name and status."""
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._call("ListNodes", ListNodesRequest(), "listing SuperNodes")
        return [
            NodeStatus(int(n.node_id), n.name, n.status, n.public_key, n.last_activated_at, last_seen(n))
            for n in res.nodes_info
        ]

    def run(self, run_id: int) -> dict[str, Any]:
        """A run's status (``status`` like ``finished:completed``), timing and traffic."""
        runs = self._list_runs(run_id, f"reading run {run_id}")
        if not runs:
            raise SuperLinkError(f"run {run_id} not found on the SuperLink")
        r = runs[0]
        return {
            "run-id": r.run_id,
            "status": f"{r.status.status}:{r.status.sub_status}" if r.status.sub_status else r.status.status,
            "details": r.status.details,
            "pending-at": r.pending_at,
            "running-at": r.running_at,
            "finished-at": r.finished_at,
            "bytes-sent": r.bytes_sent,
            "bytes-recv": r.bytes_recv,
            "clientapp-seconds": r.clientapp_runtime,
        }

    def logs(self, run_id: int) -> str:
        """The run's log as the SuperLink holds it now (what ``flwr log RUN_ID --show`` prints)."""
        import httpx
        from flwr.proto.control_pb2 import StreamLogsRequest

        stream = self._client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0))
        try:
            return next((res.log_output for res in stream), "")  # the first reply holds the log so far
        except httpx.HTTPError as exc:
            raise SuperLinkError(f"reading the log of run {run_id}: {exc}") from exc
        finally:
            stream.close()

    def unfinished_runs(self) -> list[int]:
        """Ids of the recent runs (Flower lists the last 20) whose status is not ``finished``."""
        return [int(r.run_id) for r in self._list_runs(None, "listing runs") if not is_finished(r.status.status)]

    def _list_runs(self, run_id: int | None, what: str) -> list[Any]:
        """Flower ``Run`` objects from ListRuns: the one run ``run_id``, or the recent ones when it is None."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        request = ListRunsRequest() if run_id is None else ListRunsRequest(run_id=run_id)
        return [run_from_proto(p) for p in self._call("ListRuns", request, what).run_dict.values()]

    def stop_if_running(self, run_id: int) -> None:
        """Stop the run unless it already finished."""
        if not is_finished(self.run(run_id)["status"]):
            self.stop_run(run_id)

    def stop_run(self, run_id: int) -> None:
        """Stop a run; the SuperLink also drops the messages still queued for its sites."""
        from flwr.proto.control_pb2 import StopRunRequest

        self._call("StopRun", StopRunRequest(run_id=run_id), f"stopping run {run_id}")

    def wait_for_run(self, run_id: int, timeout: float, poll: float = 1.0) -> dict[str, Any]:
        """Poll until the run's status starts with ``finished``; raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.run(run_id)
            if is_finished(info["status"]):
                return info
            if time.monotonic() > deadline:
                raise SuperLinkError(f"run {run_id} still {info['status']!r} after {timeout:.0f} s")
            time.sleep(poll)


def stage_app(dest: Path, source_root: Path | None = None, config_defaults: dict[str, Any] | None = None) -> Path:
    """Copy the FedRad Flower App (pyproject + Python sources) into ``dest`` for ``flwr run``.

    Why not ``flwr run <repo-root>``: Flower's FAB builder walks the whole tree
    (including .venv) and packs every *.py/*.toml/*.md/*.yaml/*.json it finds
    (tests, site configs, metrics) up to 10 MB, and ``flwr run`` rewrites a
    pyproject.toml that still has ``[tool.flwr.federations]``. The staged app
    holds only the code that must run on the server and the sites, so the FAB
    is small and its hash changes only when that code changes.

    ``config_defaults`` are merged into ``[tool.flwr.app.config]`` of the staged
    pyproject: Flower rejects ``--run-config`` keys that the app does not
    declare, and a consortium's settings are the run's defaults anyway.
    """
    import tomllib

    import tomli_w

    root = Path(source_root) if source_root else Path(__file__).resolve().parent.parent
    src = root / "pyproject.toml"
    if not src.is_file():
        raise SuperLinkError(f"{src} not found: stage_app needs the FedRad source tree (pyproject.toml + packages).")
    config = tomllib.loads(src.read_text())
    flwr_app = config.get("tool", {}).get("flwr", {}).get("app")
    if not flwr_app:
        raise SuperLinkError(f"{src} has no [tool.flwr.app] table; it is not a Flower App.")
    staged = {k: config[k] for k in FAB_PYPROJECT_TABLES if k in config}
    if config_defaults:
        flwr_app = {**flwr_app, "config": {**flwr_app.get("config", {}), **config_defaults}}
    # The staged tree already lacks what fab-exclude names (code_files leaves it out), and Flower refuses an
    # exclude pattern that matches no file; fab-include stays (it matches the staged files exactly).
    flwr_app = {k: v for k, v in flwr_app.items() if k != "fab-exclude"}
    staged["tool"] = {"flwr": {"app": flwr_app}}
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(staged))
    for path in code_files(root):  # exactly what shared.code_identity fingerprints
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dest


def run_wait_s(run_config: Mapping[str, Any]) -> float:
    """How long to wait for a run of ``run_config``: each round, and the final evaluation, may take its whole
    ``round-timeout-s``; 300 s more for the processes to start."""
    rounds, round_timeout = int(run_config["num-server-rounds"]), float(run_config.get("round-timeout-s", 1800))
    return (rounds + 1) * round_timeout + 300


def submit_run(
    link: SuperLink,
    app_dir: Path,
    run_config: dict[str, Any] | None = None,
    federation_config: dict[str, Any] | None = None,
) -> int:
    """Build the FAB from ``app_dir``, start a run on ``link``; return the run id.

    ``run_config`` overrides go to ``flwr run --run-config`` as a TOML file:
    its ``key=value`` form cannot carry a string with quotes or spaces (JSON
    settings such as ``strategy-params``). The keys must exist in pyproject.
    ``federation_config`` (a simulation SuperLink: ``num-supernodes``,
    ``client-resources-num-cpus``, ``init-args-num-cpus`` …) goes to ``--federation-config``.
    """
    import tempfile

    import tomli_w

    with tempfile.TemporaryDirectory(prefix="fedrad-run-config-") as tmp:
        extra: list[str] = []
        if run_config:
            path = Path(tmp) / "run-config.toml"
            path.write_text(tomli_w.dumps(dict(run_config)))
            extra = ["--run-config", str(path)]
        for key, value in (federation_config or {}).items():
            extra += ["--federation-config", f"{key}={_toml_value(value)}"]
        data = flwr_json(link, ["run", str(Path(app_dir).resolve()), link.connection, *extra])
        _check(data, "submitting the run")
    return int(data["run-id"])


def _toml_value(value: Any) -> str:
    """``value`` as a TOML literal for ``flwr``'s ``key=value`` options."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_info_cli(link: SuperLink, run_id: int) -> dict[str, Any]:
    """The run's row from ``flwr ls --run-id N --format json`` (reference path; slow, ~3 s CPU)."""
    data = _check(flwr_json(link, ["ls", link.connection, "--run-id", str(run_id)]), f"reading run {run_id}")
    runs = data.get("runs") or []
    if not runs:
        raise SuperLinkError(f"run {run_id} not found on the SuperLink")
    return dict(runs[0])
