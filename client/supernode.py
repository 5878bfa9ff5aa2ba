"""Start the site's Flower SuperNode: TLS to the consortium, signed with the site key.

Why these flags (Flower 1.42, verified; see docs/flower-notes.md):

* ``--superlink HOST:PORT`` is the consortium's *fleet proxy* address; HTTPS is
  the default and ``--root-certificates`` pins the consortium CA (from the site
  bundle) instead of the system trust store.
* ``--auth-supernode-private-key`` signs every Fleet request; the coordinator
  registered the matching public key. An unregistered key exits with code 305.
* ``--node-config FILE.toml``: a single ``.toml`` argument is read as a file,
  which avoids Flower's space-separated ``k=v`` parsing (paths with spaces).
* ``--port``: the SuperNode's own Runtime API for its ClientApp processes,
  bound to 127.0.0.1; each SuperNode on a host needs its own port.
* ``--isolation process`` + ``--superexec-auth-secret-file`` + ``--ssl-*``: in
  Flower's default ``subprocess`` isolation the SuperNode starts its own
  SuperExec and ignores any secret, so every local user could claim tasks on
  the Runtime API. FedRad starts the SuperExec itself
  (:func:`superexec_command`, Flower's with task tokens passed in files:
  client/superexec.py) with the site's secret and the Runtime API's
  certificate (client/runtime_api.py).
* No ``--allow-runtime-dependency-installation``: the SuperNode never installs
  packages (that is its default); telemetry is off via :func:`shared.processes.child_env`.
* ``--max-retries``/``--max-wait-time`` unset: the SuperNode keeps reconnecting
  through network faults and SuperLink restarts (exponential backoff).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from client.runtime_api import TOKEN_DIR_ENV, RuntimeApiError, RuntimeCredentials, ensure_runtime_credentials
from shared.processes import ManagedProcess, ProcessSet, executable

NodeConfigValue = bool | int | float | str
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
# Flower's own codes (the process itself exits 1 on any error; the code is only in the log).
EXIT_REASONS: dict[int, str] = {
    302: "the site private key could not be read (not an OpenSSH EC key)",
    303: "a site key was given without TLS",
    305: "the SuperLink refused the connection: unregistered/revoked site key, or unreachable server",
}


class SuperNodeError(RuntimeError):
    """A SuperNode setup problem the user must fix; the message names the file."""


def write_node_config(path: Path, values: Mapping[str, NodeConfigValue]) -> Path:
    """Write the node config TOML the ClientApp reads as ``context.node_config``."""
    import tomli_w

    for key, value in values.items():
        if not isinstance(value, bool | int | float | str):
            raise SuperNodeError(f"node config {key!r} must be bool/int/float/str, got {type(value).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(values)))
    return path


def supernode_command(
    *,
    superlink: str,
    ca_cert: Path | None,
    private_key: Path | None,
    node_config: Path | None,
    runtime_port: int,
    runtime: RuntimeCredentials,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    insecure: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line. ``insecure`` (to the server) exists only to prove the server refuses it.

    The Runtime API always needs ``runtime``'s secret and serves TLS; nothing runs a ClientApp until a SuperExec
    started with :func:`superexec_command` connects to it.
    """
    cmd = [executable("flower-supernode"), "--superlink", superlink]
    if insecure:
        cmd.append("--insecure")
    elif ca_cert is not None:
        cmd += ["--root-certificates", str(ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if node_config is not None:
        cmd += ["--node-config", str(node_config)]
    cmd += ["--host", "127.0.0.1", "--port", str(runtime_port), "--isolation", "process"]
    cmd += ["--superexec-auth-secret-file", str(runtime.secret)]
    cmd += ["--ssl-certfile", str(runtime.cert), "--ssl-keyfile", str(runtime.key)]
    cmd += ["--ssl-ca-certfile", str(runtime.cert)]  # self-signed: its own CA
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def superexec_command(*, runtime_port: int, runtime: RuntimeCredentials, parent_pid: int) -> list[str]:
    """The SuperExec (Flower's, via client/superexec.py) that claims this SuperNode's tasks and runs each ClientApp.

    It signs ``acquire-task`` with the secret, verifies the Runtime API's certificate (it and every ClientApp it
    starts get ``--root-certificates``), and exits when ``parent_pid`` (the SuperNode) does. No
    ``--allow-runtime-dependency-installation``: nothing is installed at run time.
    """
    return [
        sys.executable,
        "-m",
        "client.superexec",  # flower-superexec, but task tokens never on a command line
        "--runtime-api-address",
        f"127.0.0.1:{runtime_port}",
        "--root-certificates",
        str(runtime.cert),
        "--superexec-auth-secret-file",
        str(runtime.secret),
        "--parent-pid",
        str(parent_pid),
    ]


def start_supernode(
    ps: ProcessSet,
    name: str,
    *,
    superlink: str,
    ca_cert: Path,
    private_key: Path,
    node_config: Mapping[str, NodeConfigValue],
    work_dir: Path,
    runtime_port: int,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start one site's SuperNode and its SuperExec through ``ps``; return the SuperNode.

    ``work_dir`` becomes the SuperNode's ``FLWR_HOME``: Flower unpacks each
    run's FAB (the code the consortium sends) under ``work_dir/apps``, so sites
    on one host never share app folders; the Runtime API credentials live in
    ``work_dir/runtime-api/``. The SuperExec writes to the SuperNode's log (as
    it did when Flower started it), so ClientApp output stays in one place; it
    waits until the SuperNode's Runtime API is up and exits with the
    SuperNode. This returns as soon as both are spawned; readiness is
    visible on the server (``flwr supernode ls``).
    """
    work_dir = Path(work_dir)
    for label, path in (("CA certificate", ca_cert), ("site private key", private_key)):
        if not Path(path).is_file():
            raise SuperNodeError(f"{label} {path} not found; check the site bundle (fedrad-site keygen / enroll).")
    cfg = write_node_config(work_dir / "node-config.toml", node_config)
    try:
        runtime = ensure_runtime_credentials(work_dir)
    except RuntimeApiError as exc:
        raise SuperNodeError(str(exc)) from None
    cmd = supernode_command(
        superlink=superlink,
        ca_cert=ca_cert,
        private_key=private_key,
        node_config=cfg,
        runtime_port=runtime_port,
        runtime=runtime,
        max_retries=max_retries,
        max_wait_time=max_wait_time,
    )
    env, log_name = {"FLWR_HOME": str(work_dir)}, f"supernode-{name}.log"
    node = ps.start(f"supernode-{name}", cmd, env=env, cwd=cwd or work_dir, log_name=log_name)
    exec_cmd = superexec_command(runtime_port=runtime_port, runtime=runtime, parent_pid=node.pid)
    exec_env = {**env, TOKEN_DIR_ENV: str(runtime.tokens)}
    ps.start(f"superexec-{name}", exec_cmd, env=exec_env, cwd=cwd or work_dir, log_name=log_name)
    return node


def flower_exit_code(log_text: str) -> int | None:
    """Flower's exit code from a SuperNode log (``Exit Code: 305``), or None.

    Flower 1.42 logs its specific code but the process exits with status 1, so
    the log is the only place that says *why* a SuperNode stopped.
    """
    codes = _EXIT_CODE.findall(log_text)
    return int(codes[-1]) if codes else None
