"""The one teardown every real-process test shares: stop everything, then prove nothing survived."""

from __future__ import annotations

import time

from shared.processes import ProcessId, ProcessSet, is_running


def stop_all_and_check(ps: ProcessSet, started: set[ProcessId], grace_s: float = 5.0) -> set[ProcessId]:
    """Stop every process ``ps`` started (with descendants); fail if any still runs after ``grace_s``."""
    started |= ps.all_procs()
    ps.stop_all()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(p) for p in started):
        time.sleep(0.1)
    assert not [p for p in started if is_running(p)], "processes left behind"
    return started
