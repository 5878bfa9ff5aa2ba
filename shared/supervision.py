"""Keep one child process running: restart it when it dies, later each time it dies again soon.

Why: ``fedrad-site start`` restarts the site worker when it stops. Restarting
every 0.5 s turns a worker that cannot start (a broken site.yaml, a missing
library) into a hot loop that fills the log and the process list; waiting
longer after each quick death, and saying once per restart where the log is,
turns it into a message the operator can act on. A worker that ran for a while
and then died (out of memory in one round) is restarted at once again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.processes import ManagedProcess, ProcessError, ProcessSet


@dataclass
class Backoff:
    """Delays between restarts: ``initial_s`` × ``factor`` per death in a row, at most ``max_s``.

    A process that stayed up ``healthy_after_s`` counts as healthy: its death starts again at ``initial_s``.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    healthy_after_s: float = 60.0
    failures: int = 0  # deaths in a row, each within healthy_after_s of its start

    def next_delay(self, uptime_s: float) -> float:
        """The wait before restarting a process that died after ``uptime_s`` seconds."""
        if uptime_s >= self.healthy_after_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        return delay


# After this many quick deaths in a row the line says the process cannot start, not that it stopped.
KEEPS_FAILING = 3


class Supervised:
    """One process from ``start``, restarted with :class:`Backoff` when it dies; :meth:`check` never blocks.

    The dead process is dropped from ``ps`` (:meth:`ProcessSet.forget`) before
    the new one starts, so ``ps.procs`` does not grow with restarts.
    """

    def __init__(
        self,
        ps: ProcessSet,
        start: Callable[[], ManagedProcess],
        *,
        label: str,
        say: Callable[[str], None],
        backoff: Backoff | None = None,
        proc: ManagedProcess | None = None,
        down_note: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``proc``: an already started first process (else ``start`` is called now); ``down_note``: what
        the operator should know while it cannot start (added to that line)."""
        self.ps, self._start, self.label, self.say = ps, start, label, say
        self.down_note = down_note
        self.backoff = backoff or Backoff()
        self._clock = clock
        self.proc = proc or start()
        self.started_at = clock()
        self.restarts = 0
        self.delays: list[float] = []  # every wait chosen, in order (tests and incident notes)
        self._restart_at: float | None = None

    def check(self) -> ManagedProcess:
        """Call every poll: notices a death, says so once, restarts when the wait is over; returns the process."""
        now = self._clock()
        if self._restart_at is None:
            if self.proc.poll() is None:
                return self.proc
            uptime = now - self.started_at
            delay = self.backoff.next_delay(uptime)
            self.delays.append(delay)
            self._restart_at = now + delay
            self.say(self._death_line(uptime, delay))
            self.ps.forget(self.proc)
        elif now >= self._restart_at:
            self._restart_at = None
            try:
                self.proc = self._start()
            except ProcessError as exc:  # could not even spawn it (executable gone, no memory): try again later
                delay = self.backoff.next_delay(0.0)
                self.delays.append(delay)
                self._restart_at = now + delay
                self.say(f"{self.label} could not be started ({exc}); next try in {delay:.1f} s{self.down_note}")
                return self.proc
            self.started_at = self._clock()
            self.restarts += 1
        return self.proc

    def _death_line(self, uptime: float, delay: float) -> str:
        proc, failures = self.proc, self.backoff.failures
        if failures >= KEEPS_FAILING:
            lines = [ln for ln in proc.log_tail(5).splitlines() if ln.strip() and not ln.startswith("=== ")]
            last = lines[-1].strip() if lines else "(nothing logged)"
            return (
                f"{self.label} keeps stopping within {self.backoff.healthy_after_s:.0f} s of starting "
                f"({failures} times in a row, status {proc.returncode}); its last log line: {last!r}. "
                f"Fix the cause shown in {proc.log_path}; next try in {delay:.1f} s{self.down_note}"
            )
        return (
            f"{self.label} stopped (status {proc.returncode}) after {uptime:.1f} s; "
            f"restarting it in {delay:.1f} s (log: {proc.log_path})"
        )
