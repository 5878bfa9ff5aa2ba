"""The site's warm worker: one long-lived process that trains and evaluates for the per-message ClientApps.

Why: Flower's deployment engine starts a new ``flwr-clientapp`` process for
every message; importing torch (~2-4 s here), building the optimizer the
first time (~1.7 s) and reading the site's data again cost more than a small
round's training. ``fedrad-site start`` runs this worker beside the SuperNode;
the ClientApp forwards each message's arrays and config over a Unix socket
(:mod:`client.worker_protocol`) and sends the reply on. When the worker is not
there (not started, still binding), the ClientApp does the same work in its
own process: slower, same results.

What the worker trusts: it reads the data settings from the site.yaml given on
its own command line, never from the message, and it runs the FedRad code
installed at the site. It trains on that site.yaml's ``device`` and ``threads``
(default: the GPU when there is one, every core): it is started with that many
threads in its environment (:func:`worker_threads`), unlike Flower's own
processes, which stay at one. It keeps one :class:`client.federated.SiteSession` in
memory per run (a new run re-reads the data, so files added between runs are
seen). Requests are served one at a time, as the SuperNode sends them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.worker_protocol import PROTOCOL, FrameError, recv_frame, send_frame
from shared.processes import ManagedProcess, ProcessSet, exit_on_sigterm, thread_env

if TYPE_CHECKING:
    from shared.hardware import Hardware

# Run-config keys that shape a session; a change of any of them opens a new one.
SESSION_KEYS = (
    "task-type",
    "classes",
    "labels",
    "findings",
    "task-options",  # e.g. a 3D task's spacing and window: the data are read again under the new ones
    "image-size",
    "model",
    "seed",
    "consortium",
    "run-dir",
)


def socket_path_for(name: str) -> Path:
    """A fresh Unix-socket path in a 0700 folder (short: AF_UNIX paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"fedrad-{name[:20]}-")) / "worker.sock"


def start_site_worker(
    ps: ProcessSet, name: str, site_config: Path, *, socket_path: Path | None = None, cwd: Path | None = None
) -> tuple[ManagedProcess, Path]:
    """Start the worker through ``ps``; return it and the socket path for the node config ``worker-socket``.

    Pass ``socket_path`` to restart a worker on the path a running SuperNode already knows.
    """
    path = socket_path or socket_path_for(name)
    env = thread_env(worker_threads(site_config))
    cmd = [
        sys.executable,
        "-m",
        "client.site_worker",
        "--socket",
        str(path),
        "--site-config",
        str(Path(site_config).resolve()),
        "--site-name",
        name,
        "--parent-pid",
        str(os.getpid()),
    ]
    return ps.start(f"worker-{name}", cmd, env=env, cwd=cwd), path


def worker_threads(site_config: Path) -> int:
    """The worker's torch threads: site.yaml's ``threads`` (``auto``: every core this process may use).

    No torch import. A site.yaml that no longer parses gives 1: the worker itself then exits with the
    file's error (:func:`_check_site_config`), which is what the operator needs to see.
    """
    from client.site_config import load_site_file
    from shared.config import ConfigError
    from shared.hardware import resolve_threads

    try:
        return resolve_threads(load_site_file(site_config).threads)
    except (ConfigError, OSError):
        return 1


@dataclass
class SiteWorker:
    """Turns requests into :meth:`SiteSession.handle` calls, keeping the session of the current run."""

    node_config: dict[str, str]
    _key: tuple | None = None
    _session: Any = None

    def session(self, run_id: int, run_config: dict[str, Any]):  # noqa: ANN201 - client.federated.SiteSession
        from client.federated import SiteSession

        key = (run_id, *(str(run_config.get(k)) for k in SESSION_KEYS))
        if key != self._key:
            self._session, self._key = None, None  # free the old run's tensors before loading
            self._session, self._key = SiteSession.open(run_config, self.node_config), key
        return self._session

    def handle(self, header: dict[str, Any], arrays: dict) -> tuple[dict[str, Any], dict]:
        import torch

        if header.get("protocol") != PROTOCOL:
            return {
                "ok": False,
                "error": f"protocol {header.get('protocol')} != worker's {PROTOCOL}: update FedRad at the site",
            }, {}
        session = self.session(int(header.get("run_id", 0)), dict(header.get("run_config") or {}))
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        new_state, metrics = session.handle(str(header.get("op")), state, dict(header.get("config") or {}))
        out = {k: v.detach().cpu().numpy() for k, v in (new_state or {}).items()}
        return {"ok": True, "metrics": metrics}, out


def _reply_error(exc: BaseException) -> dict[str, Any]:
    from client.worker_protocol import SiteRefusal
    from shared.config import ConfigError

    if isinstance(exc, SiteRefusal):
        return {"ok": False, "refused": str(exc)}
    if isinstance(exc, ConfigError | ValueError | FileNotFoundError):
        return {"ok": False, "error": str(exc)}
    traceback.print_exc()
    return {"ok": False, "error": f"internal error in the site worker ({type(exc).__name__}); see the worker log"}


def _serve_one(worker: SiteWorker, conn: socket.socket) -> None:
    with conn:
        try:
            header, arrays = recv_frame(conn)
        except (FrameError, ConnectionError) as exc:
            print(f"bad request: {exc}", flush=True)
            return
        t0 = time.perf_counter()
        try:
            reply, out = worker.handle(header, arrays)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reply; the worker keeps serving
            reply, out = _reply_error(exc), {}
        status = "ok" if reply.get("ok") else f"error: {reply.get('error')}"
        print(
            f"run {header.get('run_id')} {header.get('op')} round {header.get('config', {}).get('server-round')}: "
            f"{time.perf_counter() - t0:.2f} s {status}",
            flush=True,
        )
        try:
            send_frame(conn, reply, out)
        except OSError as exc:
            print(f"could not send the reply: {exc}", flush=True)


def _warm_up(hardware: Hardware) -> None:
    """Pay torch's one-time costs now, not in round 1: import, first model, first AdamW step (on the GPU: its
    context and kernels)."""
    import torch

    from shared.hardware import activate
    from shared.models import build_model

    activate(hardware)
    model = build_model("smallcnn", 2, 32).to(hardware.torch_device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(torch.zeros(2, 1, 32, 32, device=hardware.torch_device)).sum()
    loss.backward()
    opt.step()


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def serve(
    socket_path: Path,
    site_config: Path,
    site_name: str,
    parent_pid: int | None = None,
    hardware: Hardware | None = None,
) -> None:
    """Bind first (so early ClientApps queue instead of falling back), then warm up, then serve forever."""
    if parent_pid:
        _exit_with_parent(parent_pid)
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    server.listen(8)
    try:
        print(f"site worker for {site_name!r} listening on {socket_path}", flush=True)
        t0 = time.perf_counter()
        hardware = hardware or _site_hardware(site_config)
        _warm_up(hardware)
        print(f"warm in {time.perf_counter() - t0:.2f} s; training on {hardware.describe()}", flush=True)
        worker = SiteWorker({"site-config": str(site_config), "site-name": site_name})
        while True:
            conn, _ = server.accept()
            _serve_one(worker, conn)
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)
        try:
            socket_path.parent.rmdir()
        except OSError:
            pass


def _check_site_config(site_config: Path) -> None:
    """Exit 2 with one line naming the file when site.yaml does not parse (edited since ``start`` checked it).

    Without this the worker would start, warm up and fail at the first message;
    dying at once lets ``fedrad-site start`` say the worker cannot start, with this line.
    """
    from client.site_config import load_site_file
    from shared.config import ConfigError

    try:
        load_site_file(site_config)
    except (ConfigError, OSError) as exc:
        print(f"site worker not started: {exc}", flush=True)
        raise SystemExit(2) from None


def _site_hardware(site_config: Path) -> Hardware:
    """site.yaml's device/threads/amp; exit 2 with the file's message when the GPU it asks for is absent."""
    from client.site_config import load_site_file
    from shared.config import ConfigError
    from shared.hardware import site_hardware

    try:
        return site_hardware(load_site_file(site_config), site_config)
    except ConfigError as exc:
        print(f"site worker not started: {exc}", flush=True)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--site-config", required=True, type=Path)
    parser.add_argument("--site-name", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    _check_site_config(args.site_config)
    try:
        serve(args.socket, args.site_config, args.site_name, args.parent_pid)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
