"""The one place FedRad starts child processes (SuperLink, SuperNode, proxy, ``flwr`` CLI).

Why one place: every process FedRad starts must (a) make no calls home and no
installs (hospital policy), (b) use one torch/BLAS thread so several sites on a
small machine do not thrash (measured up to 10x faster on 2 cores), (c) find
Flower's helper executables (``flower-superexec``, ``flwr-clientapp``,
``flwr-serverapp``), which Flower launches *by name from PATH*, and (d) never
outlive FedRad, even though Flower detaches some of its own children into new
sessions. Getting any of these wrong in one call site is a silent bug, so the
rules live here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import psutil

from shared.logs import LOG_BACKUPS, LOG_MAX_BYTES, RotatingLog

# Environment every FedRad child gets. Flower reads these at import time.
QUIET_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",  # no usage telemetry to flower.ai
    "FLWR_DISABLE_UPDATE_CHECK": "1",  # no "new version available" call home
    # SuperLink's default for runtime `uv sync` per run; the CLI flag is passed too.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",  # log files show progress as it happens
    "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc litter in per-run FAB folders
}
# Latency knobs Flower reads from the environment; kept if the caller set them.
# SuperExec (which spawns each ClientApp/ServerApp process) polls for tasks every
# 1 s by default; 0.2 s cuts ~0.4 s average from every message at negligible CPU.
TUNING_ENV_DEFAULTS: dict[str, str] = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}
THREAD_ENV_KEYS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


_ANSI = re.compile(rb"\x1b\[[0-9;]*m")
_MAX_LINE = 64 * 1024


class ProcessError(RuntimeError):
    """A child process failed to start or to become ready; the message includes its log tail."""


def bin_dir() -> Path:
    """Directory holding this interpreter's console scripts (``flower-superlink`` …)."""
    return Path(sys.executable).parent


def executable(name: str) -> str:
    """Absolute path of a console script installed next to this interpreter.

    Falls back to the bare name (PATH lookup) so a system-wide install still works.
    """
    candidate = bin_dir() / name
    return str(candidate) if candidate.exists() else name


def child_env(extra: Mapping[str, str] | None = None, *, threads: int = 1) -> dict[str, str]:
    """Environment for a FedRad child: telemetry/update-check/installs off, ``threads`` threads.

    The interpreter's bin directory goes first on PATH because Flower spawns
    ``flower-superexec``/``flwr-clientapp``/``flwr-serverapp`` by name.
    """
    env = dict(os.environ)
    env.update(QUIET_ENV)
    for key, value in TUNING_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    env.update(thread_env(threads))
    path = env.get("PATH", "")
    bdir = str(bin_dir())
    if path.split(os.pathsep)[0] != bdir:
        env["PATH"] = bdir + (os.pathsep + path if path else "")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a child ``threads`` threads (OpenMP, MKL, OpenBLAS, torch via
    ``FEDRAD_TORCH_THREADS``); pass it as ``env`` to :meth:`ProcessSet.start` for a child that trains with more
    than the set's default (the site worker: site.yaml's ``threads``)."""
    return {**{key: str(threads) for key in THREAD_ENV_KEYS}, "FEDRAD_TORCH_THREADS": str(threads)}


def apply_thread_limit(default: int = 1) -> int:
    """Set torch's intra-op threads from ``FEDRAD_TORCH_THREADS`` (set by :func:`child_env`).

    Called first thing in ClientApp/ServerApp handlers so the one-thread rule
    holds even where the process environment was not built by :func:`child_env`
    (e.g. a SuperNode started by hand); a no-op when already set.
    """
    threads = int(os.environ.get("FEDRAD_TORCH_THREADS", default))
    import torch  # local: keep this module importable without torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------- ports
_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now on ``host`` and not handed out before by this process.

    The kernel picks it (bind to port 0), so parallel test runs do not collide;
    remembering handed-out ports avoids giving the same port twice before the
    first user binds it.
    """
    with _port_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ProcessError(f"could not find a free TCP port on {host}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: ManagedProcess | None = None) -> float:
    """Block until ``host:port`` accepts connections; return seconds waited.

    Fails fast (with the log tail) if ``proc`` exits first, instead of waiting
    out the timeout for a process that already crashed.
    """
    t0 = time.monotonic()
    while True:
        if port_open(host, port):
            return time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            raise ProcessError(
                f"{proc.name} exited with code {proc.returncode} before listening on "
                f"{host}:{port}.\n--- {proc.log_path} ---\n{proc.log_tail()}"
            )
        if time.monotonic() - t0 > timeout:
            tail = f"\n--- {proc.log_path} ---\n{proc.log_tail()}" if proc else ""
            raise ProcessError(f"nothing listening on {host}:{port} after {timeout:.0f} s{tail}")
        time.sleep(0.1)


# ---------------------------------------------------------------- process tree
# A process is identified by (pid, start time in ms since the epoch, from psutil), not by pid
# alone: on a shared machine a recorded pid may be reused by someone else's process before we
# signal it, and we must never signal a process we did not start. psutil finds the tree the same
# way on Linux and macOS (a /proc walk found nothing on macOS and left Flower's SuperExec running).
ProcessId = tuple[int, int]


def _start_ms(proc: psutil.Process) -> int:
    return round(proc.create_time() * 1000)


def _live(ident: ProcessId) -> psutil.Process | None:
    """The process with this identity if it still runs (same start time, not a zombie), else None."""
    try:
        proc = psutil.Process(ident[0])
        if _start_ms(proc) != ident[1] or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def proc_id(pid: int) -> ProcessId | None:
    """``(pid, start time)`` of a live process, or None."""
    try:
        return (pid, _start_ms(psutil.Process(pid)))
    except psutil.Error:
        return None


def descendants(pid: int) -> list[ProcessId]:
    """All live descendants of ``pid``, found by parent links (``psutil``: Linux, macOS, BSD, Windows).

    Needed because Flower starts ``flower-superexec`` with ``start_new_session=True``,
    so a signal to our child's process group does not reach it.
    """
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out: list[ProcessId] = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            out.append((child.pid, _start_ms(child)))
    return out


def is_running(ident: ProcessId) -> bool:
    """True while the process exists, is the same one (start time), and is not a zombie."""
    return _live(ident) is not None


def _signal_ids(idents: Iterable[ProcessId], sig: int) -> None:
    for ident in idents:
        if (proc := _live(ident)) is not None:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)


class ManagedProcess:
    """A child in its own session, with its output in a log file, stopped with its whole tree."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timestamps: bool = True,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        """``log_max_bytes``/``log_backups``: the log's cap (see :mod:`shared.logs`); it is appended across restarts."""
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path)
        self._known: set[ProcessId] = set()  # descendants seen so far (they may outlive this process)
        self._log = RotatingLog(self.log_path, max_bytes=log_max_bytes, backups=log_backups)  # 0640; closed in stop()
        self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(self.cmd)}\n".encode())
        self.log_start = self._log.size()  # this run's output starts here (see shared.logs.LogFollower)
        try:
            self.popen = subprocess.Popen(
                self.cmd,
                stdout=subprocess.PIPE if timestamps else self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else child_env(),
                cwd=str(cwd) if cwd else None,
                start_new_session=True,  # own process group: one signal reaches the tree
            )
        except OSError as exc:
            self._log.close()
            raise ProcessError(f"cannot start {name} ({self.cmd[0]}): {exc}") from exc
        self._pump: threading.Thread | None = None
        if timestamps:
            self._pump = threading.Thread(target=self._copy_output, name=f"log-{name}", daemon=True)
            self._pump.start()

    def _copy_output(self) -> None:
        """Copy child output to the log, each line prefixed with wall-clock time, colours stripped.

        Flower logs without timestamps (and with ANSI colours); timestamps are
        what make round-time breakdowns and incident reports possible.
        """
        assert self.popen.stdout is not None
        stdout = self.popen.stdout
        for line in iter(lambda: stdout.readline(_MAX_LINE), b""):  # a line without end must not fill memory
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d} "
            try:
                self._log.write(stamp.encode() + _ANSI.sub(b"", line))
            except OSError:  # disk full: keep draining, or the child blocks on a full pipe
                pass
        stdout.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        """Exit code, or None while running; also remembers current descendants for stop()."""
        rc = self.popen.poll()
        if rc is None:
            self._known.update(descendants(self.pid))
        return rc

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; raises ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self.popen.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """The whole log (tests grep it)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tree(self) -> set[ProcessId]:
        """This process's descendants, now and any seen earlier."""
        if self.popen.poll() is None:
            self._known.update(descendants(self.pid))
        return set(self._known)

    def signal(self, sig: int, tree: set[ProcessId] | None = None) -> None:
        """Send ``sig`` to the process group (while our child leads it) and to ``tree``."""
        if self.popen.poll() is None:  # not yet reaped: the pid and its group are still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        _signal_ids(tree if tree is not None else self._known, sig)

    def finished(self, tree: set[ProcessId]) -> bool:
        """True once the process and every process in ``tree`` are gone (zombies count as gone)."""
        return self.popen.poll() is not None and not any(is_running(p) for p in tree)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop this process and its whole tree (see :func:`stop_processes`)."""
        stop_processes([self], timeout)
        return self.popen.returncode

    def _close(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=2)
        if self._pump is not None:
            self._pump.join(timeout=1)  # descendants may still hold the pipe; do not wait for them
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_processes(procs: Sequence[ManagedProcess], timeout: float = 5.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL every process group and descendant, all in parallel.

    SIGINT first: Flower's handlers deactivate the node and stop servers on it.
    Descendants are signalled by pid because Flower starts ``flower-superexec``
    in its own session, out of reach of a process-group signal.
    """
    trees = {id(p): p.tree() for p in procs}
    for sig, wait in ((signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2), (signal.SIGKILL, 2.0)):
        alive = [p for p in procs if not p.finished(trees[id(p)])]
        if not alive:
            break
        for p in alive:
            p.signal(sig, trees[id(p)])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not all(p.finished(trees[id(p)]) for p in alive):
            time.sleep(0.05)
    for p in procs:
        p._close()  # noqa: SLF001 - same module


class ProcessSet:
    """Processes stopped together, newest first, also at interpreter exit.

    Use as a context manager (tests, ``fedrad-server start``) so a failure
    anywhere still stops everything that was started.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        threads: int = 1,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.threads = threads
        self.log_max_bytes, self.log_backups = log_max_bytes, log_backups
        self.procs: list[ManagedProcess] = []
        atexit.register(self.stop_all)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_name: str | None = None,
    ) -> ManagedProcess:
        """Start ``cmd`` with :func:`child_env` plus ``env``; output goes to ``log_dir/<name>.log``."""
        proc = ManagedProcess(
            name,
            cmd,
            self.log_dir / (log_name or f"{name}.log"),
            env=child_env(env, threads=self.threads),
            cwd=cwd,
            log_max_bytes=self.log_max_bytes,
            log_backups=self.log_backups,
        )
        self.procs.append(proc)
        return proc

    def forget(self, proc: ManagedProcess, timeout: float = 5.0) -> None:
        """Stop what is left of ``proc`` (its descendants; it may have exited) and drop it from the set.

        A supervisor calls this before restarting a process, so the set holds
        the live process, not one entry per restart.
        """
        stop_processes([proc], timeout)
        self.procs = [p for p in self.procs if p is not proc]

    def all_procs(self) -> set[ProcessId]:
        """Every started process and every descendant seen so far (for leak checks with :func:`is_running`)."""
        idents: set[ProcessId] = set()
        for proc in self.procs:
            if (ident := proc_id(proc.pid)) is not None and proc.popen.poll() is None:
                idents.add(ident)
            idents.update(proc.tree())
        return idents

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every process at once (in parallel: a sequential stop costs seconds per process)."""
        procs, self.procs = self.procs, []
        stop_processes(procs, timeout)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def run_cli(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    threads: int = 1,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command (``flwr …``) with the FedRad child environment; capture output.

    ``cwd`` matters for ``flwr``: run it where no ``pyproject.toml`` with
    ``[tool.flwr.federations]`` exists, or Flower migrates (rewrites) that file.
    """
    return subprocess.run(
        [str(c) for c in cmd],
        env=child_env(env, threads=threads),
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@contextlib.contextmanager
def processes(log_dir: Path, *, threads: int = 1) -> Iterator[ProcessSet]:
    """``with processes(dir) as ps:`` — everything started through ``ps`` is stopped on exit."""
    ps = ProcessSet(log_dir, threads=threads)
    try:
        yield ps
    finally:
        ps.stop_all()


def exit_on_sigterm() -> None:
    """Turn SIGTERM (systemd stop, ``docker stop``) into a normal exit so cleanup runs.

    Python runs ``atexit``/``finally`` blocks on SystemExit but not on a bare
    SIGTERM; long-running commands (``fedrad-server start``, ``fedrad-site start``)
    call this first so their :class:`ProcessSet` stops Flower's processes.
    """

    def _handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)
