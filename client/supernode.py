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
* No ``--allow-runtime-dependency-installation``: the SuperNode never installs
  packages (that is its default); telemetry is off via :func:`shared.processes.child_env`.
* ``--max-retries``/``--max-wait-time`` unset: the SuperNode keeps reconnecting
  through network faults and SuperLink restarts (exponential backoff).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

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
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    insecure: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line. ``insecure`` exists only to prove the server refuses it."""
    cmd = [executable("flower-supernode"), "--superlink", superlink]
    if insecure:
        cmd.append("--insecure")
    elif ca_cert is not None:
        cmd += ["--root-certificates", str(ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if node_config is not None:
        cmd += ["--node-config", str(node_config)]
    cmd += ["--host", "127.0.0.1", "--port", str(runtime_port), "--isolation", "subprocess"]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


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
    """Start one site's SuperNode through ``ps``.

    ``work_dir`` becomes the SuperNode's ``FLWR_HOME``: Flower unpacks each
    run's FAB (the code the consortium sends) under ``work_dir/apps``, so sites
    on one host never share app folders. The process is returned as soon as it
    is spawned; readiness is visible on the server (``flwr supernode ls``).
    """
    work_dir = Path(work_dir)
    for label, path in (("CA certificate", ca_cert), ("site private key", private_key)):
        if not Path(path).is_file():
            raise SuperNodeError(f"{label} {path} not found; check the site bundle (fedrad-site keygen / enroll).")
    cfg = write_node_config(work_dir / "node-config.toml", node_config)
    cmd = supernode_command(
        superlink=superlink,
        ca_cert=ca_cert,
        private_key=private_key,
        node_config=cfg,
        runtime_port=runtime_port,
        max_retries=max_retries,
        max_wait_time=max_wait_time,
    )
    return ps.start(f"supernode-{name}", cmd, env={"FLWR_HOME": str(work_dir)}, cwd=cwd or work_dir)


def flower_exit_code(log_text: str) -> int | None:
    """Flower's exit code from a SuperNode log (``Exit Code: 305``), or None.

    Flower 1.42 logs its specific code but the process exits with status 1, so
    the log is the only place that says *why* a SuperNode stopped.
    """
    codes = _EXIT_CODE.findall(log_text)
    return int(codes[-1]) if codes else None
