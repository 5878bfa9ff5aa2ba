"""Process trees (psutil), restart backoff and log rotation: real child processes, real files, seconds each."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from shared.logs import LogFollower, RotatingLog, rotated_name
from shared.processes import ProcessSet, descendants, is_running, proc_id
from shared.supervision import Backoff, Supervised

pytestmark = pytest.mark.timeout(60)
PY = sys.executable

# A child that starts a grandchild in its own session (as Flower starts flower-superexec) and waits.
DETACHING_PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
    "print('started', flush=True)\n"
    "time.sleep(120)\n"
)


def _wait_for(predicate, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _detached_children(pid: int) -> int:
    """How many descendants of `pid` run in a session of their own (out of reach of a process-group signal)."""
    try:
        return sum(os.getsid(child) != os.getsid(pid) for child, _ in descendants(pid))
    except ProcessLookupError:
        return 0


def test_stop_reaches_a_grandchild_in_its_own_session(tmp_path: Path) -> None:
    """The tree is found with psutil (any OS), so stopping a process also stops what it detached."""
    with ProcessSet(tmp_path) as ps:
        proc = ps.start("parent", [PY, "-c", DETACHING_PARENT])
        # Between fork and setsid the grandchild still shares the parent's session: wait past that window.
        _wait_for(lambda: _detached_children(proc.pid) == 1)
        (grandchild,) = descendants(proc.pid)
        assert psutil.Process(grandchild[0]).ppid() == proc.pid
        assert grandchild in ps.all_procs()
        proc.stop(timeout=2)
        assert not is_running(grandchild) and proc.returncode is not None


def test_a_process_identity_includes_its_start_time() -> None:
    """A recorded pid whose start time differs (the pid was reused) is not ours: not running, never signalled."""
    me = proc_id(os.getpid())
    assert me is not None and is_running(me)
    assert not is_running((me[0], me[1] - 1000))
    assert proc_id(2**22 + 12345) is None  # above Linux's pid_max


def test_backoff_grows_is_capped_and_resets_after_a_healthy_run() -> None:
    b = Backoff(initial_s=0.5, max_s=30.0, factor=2.0, healthy_after_s=60.0)
    assert [b.next_delay(1.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.next_delay(61.0) == 0.5  # it ran long enough: a new death starts over
    assert b.next_delay(0.1) == 1.0


def test_a_process_that_keeps_dying_is_restarted_later_each_time_and_listed_once(tmp_path: Path) -> None:
    """Real ProcessSet, real child that exits at once: growing delays, one entry in the process list, a clear line."""
    said: list[str] = []
    cmd = [PY, "-c", "import sys; print('site.yaml: classes: missing', flush=True); sys.exit(3)"]
    with ProcessSet(tmp_path) as ps:
        sup = Supervised(
            ps,
            lambda: ps.start("worker-x", cmd),
            label="site worker",
            say=said.append,
            backoff=Backoff(initial_s=0.05, max_s=0.4, healthy_after_s=30.0),
        )
        starts, most_listed = [time.monotonic()], 0
        deadline = time.monotonic() + 40
        while sup.restarts < 6:
            assert time.monotonic() < deadline, said
            proc = sup.check()
            if len(starts) <= sup.restarts:
                starts.append(time.monotonic())
            most_listed = max(most_listed, len(ps.procs))
            assert proc in ps.procs or proc.poll() is not None
            time.sleep(0.005)
    assert sup.delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubled after each quick death, then capped
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, sup.delays, strict=False)), (gaps, sup.delays)
    assert most_listed == 1  # the dead entry is replaced, not added to
    assert len(said) == 6 and all(str(tmp_path / "worker-x.log") in line for line in said)
    assert "stopped (status 3)" in said[0] and "restarting it in 0.1 s" in said[1]
    assert "keeps stopping" in said[2] and "site.yaml: classes: missing" in said[2]  # names the cause and the log


def test_a_process_that_cannot_be_spawned_is_tried_again_later(tmp_path: Path) -> None:
    said: list[str] = []
    cmds = iter([[PY, "-c", "pass"], [str(tmp_path / "gone")], [PY, "-c", "import time; time.sleep(30)"]])
    with ProcessSet(tmp_path) as ps:
        sup = Supervised(
            ps, lambda: ps.start("w", next(cmds)), label="w", say=said.append, backoff=Backoff(initial_s=0.05)
        )
        _wait_for(lambda: sup.check().poll() is None and sup.restarts == 1)
    assert sup.delays == [0.05, 0.1] and "could not be started" in said[1] and "next try in 0.1 s" in said[1]


def test_rotating_log_caps_each_file_and_keeps_a_fixed_number(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = RotatingLog(path, max_bytes=1000, backups=2)
    line = b"y" * 99 + b"\n"
    for _ in range(100):  # 10 kB written, 1 kB allowed per file
        log.write(line)
    log.close()
    log.write(line)  # after close: dropped, the file is not reopened
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["x.log", "x.log.1", "x.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert path.stat().st_size + rotated_name(path, 1).stat().st_size + rotated_name(path, 2).stat().st_size == 3000
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_follower_reads_every_line_once_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    log = RotatingLog(path, max_bytes=300, backups=1)
    log.write(b"old run\n")
    follower = LogFollower(path, log.size())
    seen: list[str] = []
    for i in range(60):  # ~20 rotations; the follower reads after every few lines
        log.write(f"line {i:02d} {'z' * 20}\n".encode())
        if i % 3 == 2:
            seen += follower.read_lines()
    log.write(b"partial")  # no newline yet: not returned until complete
    seen += follower.read_lines()
    log.write(b" end\n")
    seen += follower.read_lines()
    assert seen == [f"line {i:02d} {'z' * 20}" for i in range(60)] + ["partial end"]


def test_process_logs_are_rotated_at_restart_and_while_running(tmp_path: Path) -> None:
    """Per-process logs are appended across restarts; the cap holds both for the pump and a direct-write child."""
    chatty = [PY, "-c", "for i in range(400): print('x' * 60, i)"]  # ~26 kB
    with ProcessSet(tmp_path, log_max_bytes=8000, log_backups=2) as ps:
        for _ in range(3):
            proc = ps.start("chatty", chatty)
            assert proc.wait(timeout=20) == 0
            ps.forget(proc)
        assert ps.procs == []
    logs = sorted(p.name for p in tmp_path.iterdir())
    assert logs == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(p.stat().st_size <= 8000 for p in tmp_path.iterdir())
    assert "x" * 60 + " 399" in (tmp_path / "chatty.log").read_text()  # the newest lines are in the live file

    from shared.processes import ManagedProcess

    direct = tmp_path / "direct"
    for _ in range(2):  # a child writing the file itself: rotated when it is started again
        proc = ManagedProcess("direct", chatty, direct / "d.log", timestamps=False, log_max_bytes=8000, log_backups=1)
        assert proc.wait(timeout=20) == 0
        proc.stop()
    assert sorted(p.name for p in direct.iterdir()) == ["d.log", "d.log.1"]
    assert (direct / "d.log").read_text().startswith("\n=== ")  # the second run starts a fresh file


def test_forget_stops_what_a_dead_process_left_running(tmp_path: Path) -> None:
    """A process that died leaving a detached grandchild (Flower's SuperExec): forget() stops the grandchild."""
    with ProcessSet(tmp_path) as ps:
        proc = ps.start("parent", [PY, "-c", DETACHING_PARENT])
        _wait_for(lambda: proc.poll() is None and len(descendants(proc.pid)) == 1)
        (grandchild,) = descendants(proc.pid)
        proc.poll()  # remembers the tree, as the supervisors' polls do
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert is_running(grandchild)
        ps.forget(proc, timeout=2)
        assert not is_running(grandchild) and ps.procs == []


def test_site_start_follows_the_supernode_log_across_a_rotation(tmp_path: Path) -> None:
    """`fedrad-site start` echoes a SuperNode's lines from a log that rotates under it: each once, in order,
    and still sees both the connection at the start and the exit code at the end."""
    import io

    from rich.console import Console

    from client.connection_watch import ConnectionWatch
    from client.site_start import _follow, explain_exit
    from shared.processes import free_port

    node = (
        "import time\n"
        "print('INFO : SuperNode ID: 42', flush=True)\n"
        "for burst in range(3):\n"
        "    for i in range(30):\n"
        "        print(f'INFO : Receiving: train message {burst * 30 + i:03d}', 'x' * 20, flush=True)\n"
        "    time.sleep(1.2)\n"  # > the follower's 0.5 s poll: at most one rotation between two reads
        "print('ERROR : Exit Code: 305', flush=True)\n"
    )
    out = io.StringIO()
    console = Console(file=out, width=300)
    with ProcessSet(tmp_path, log_max_bytes=3000, log_backups=1) as ps:
        ps.start("supernode-old", [PY, "-c", "print('Exit Code: 302')"], log_name="supernode.log").wait(timeout=20)
        proc = ps.start("supernode", [PY, "-c", node], log_name="supernode.log")
        worker = Supervised(ps, lambda: ps.start("w", [PY, "-c", "import time; time.sleep(60)"]), label="w", say=print)
        watch = ConnectionWatch(f"127.0.0.1:{free_port()}", tmp_path / "ca.crt", tmp_path / "site.yaml", print)
        connected, text = _follow(proc, worker, watch, console)
    assert (tmp_path / "supernode.log.1").exists()  # it did rotate while being followed
    shown = [ln for ln in out.getvalue().splitlines() if "Receiving" in ln]
    assert [ln.split()[-2] for ln in shown] == [f"{i:03d}" for i in range(90)]
    assert connected and "SuperNode ID" in out.getvalue()
    assert "305" in explain_exit(text, proc.returncode) and "302" not in text  # this run's lines only
