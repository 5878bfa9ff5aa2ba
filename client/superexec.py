"""``python -m client.superexec``: Flower's ``flower-superexec``, handing each ClientApp its task token in a file.

Why: Flower's subprocess executor starts every ClientApp as
``flwr-clientapp --token TOKEN``, and any local user can read a process's
command line (``/proc/PID/cmdline``, ``ps``) unless ``/proc`` is mounted with
``hidepid``. The token is the ClientApp's only credential on the Runtime API:
measured on Flower 1.42, uid ``nobody`` polling ``/proc`` picked a training
task's token off the command line, pulled the server's message (0.7 MB, HTTP
200) before the real ClientApp could, and the run failed, even with the
SuperExec secret in place. ``flwr-clientapp`` also takes ``--token-file``
(Flower's own option), so this wrapper runs Flower's SuperExec unchanged except
for the executor: the token goes into a 0600 file in a 0700 folder of the
site's account (``FEDRAD_TOKEN_DIR``), and the file is deleted as soon as that
ClientApp exits. Everything else (arguments, polling, retries, the
SuperExec secret) is Flower's; it starts once the SuperNode's Runtime API
accepts connections (:func:`wait_for_runtime_api`).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor

from client.runtime_api import TOKEN_DIR_ENV


class TokenFileExecutor(SubprocessExecutor):
    """Flower's :class:`SubprocessExecutor`, with ``--token-file`` instead of ``--token`` on the command line."""

    def __init__(self, token_dir: Path) -> None:
        self.token_dir = Path(token_dir)
        self.token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.token_dir, 0o700)
        for stale in self.token_dir.glob("*.token"):  # left by a SuperExec that was killed
            stale.unlink(missing_ok=True)
        self.running: dict[Path, subprocess.Popen[bytes]] = {}

    def command(self, spec: ExecutionSpec, token_file: Path) -> list[str]:
        """The TaskExecutor command line: Flower's, but the token is named by file."""
        args = [
            TASK_TYPE_TO_COMMAND[spec.task_type],
            TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address,
            "--token-file",
            str(token_file),
        ]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args.extend(["--root-certificates", spec.root_certificates_path])
        if spec.parent_pid is not None:
            args.extend(["--parent-pid", str(spec.parent_pid)])
        if spec.runtime_dependency_install:
            args.append("--allow-runtime-dependency-installation")
        return args

    def write_token(self, token: str) -> Path:
        """A new 0600 file holding ``token`` (never an existing file, never through a link)."""
        path = self.token_dir / f"{secrets.token_hex(8)}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Start the ClientApp (or other TaskExecutor) with its token in a file."""
        self.reconcile()
        token_file = self.write_token(spec.token)
        out: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        try:
            proc = subprocess.Popen(self.command(spec, token_file), **(out if spec.suppress_output else {}))  # noqa: S603
        except OSError:
            token_file.unlink(missing_ok=True)
            raise
        self.running[token_file] = proc
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Delete the token files of ClientApps that have exited (called by SuperExec on every poll)."""
        for path, proc in list(self.running.items()):
            if proc.poll() is not None:
                path.unlink(missing_ok=True)
                del self.running[path]

    def close(self) -> None:
        """SuperExec is stopping: its ClientApps stop with it (``--parent-pid``), so no token stays useful."""
        for path in self.running:
            path.unlink(missing_ok=True)
        self.running.clear()


def wait_for_runtime_api(address: str, parent_pid: int | None, every_s: float = 0.1) -> bool:
    """Block until ``address`` accepts connections (True), or until ``parent_pid`` has exited (False).

    Why: FedRad starts this process next to the SuperNode, and Flower's SuperExec would log "Connection
    attempt failed, retrying" into the site's SuperNode log until the Runtime API is up; an operator, or
    ``fedrad-site start`` explaining connection failures, would read that as the server being unreachable.
    """
    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
            return True
        except OSError:
            pass
        if parent_pid is not None:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # alive, someone else's: cannot happen for our own SuperNode, keep waiting
        time.sleep(every_s)


def main() -> None:
    """Run ``flower-superexec`` (same arguments) with :class:`TokenFileExecutor`, once the Runtime API is up."""
    import argparse
    import importlib

    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType

    run_superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")

    token_dir = os.environ.get(TOKEN_DIR_ENV)
    if not token_dir:
        sys.exit(f"{TOKEN_DIR_ENV} is not set: the folder (0700) where task tokens are handed to ClientApps.")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--runtime-api-address", required=True)
    where.add_argument("--parent-pid", type=int)
    known, _ = where.parse_known_args()
    if not wait_for_runtime_api(known.runtime_api_address, known.parent_pid):
        return  # the SuperNode stopped before its Runtime API came up: nothing to serve
    flower_get_executor = run_superexec.get_executor

    def get_executor(executor_type: ExecutorType, *args: Any, **kwargs: Any) -> Any:
        if executor_type != ExecutorType.SUBPROCESS:
            return flower_get_executor(executor_type, *args, **kwargs)
        return TokenFileExecutor(Path(token_dir))

    run_superexec.get_executor = get_executor
    flower_superexec()


if __name__ == "__main__":
    main()
