"""Turn the SuperNode's endless retry lines into one sentence with the cause, and a rare reminder.

Why: against a server that is down, Flower logs "Connection attempt failed,
retrying in N seconds" again and again and never says why. A new hospital
user reading that cannot tell a stopped server from a firewall, a DNS typo or
the wrong CA. The watch reads the SuperNode's log lines as ``fedrad-site
start`` echoes them: on the first failure of an outage it probes the address
itself (:func:`client.tls_check.probe_server`) and says once what failed and
what to check; the retry lines stay in the SuperNode log, off the console; a
reminder (probed again: the cause may change) comes at most every
``remind_every_s``. A successful connection ends the outage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from client.tls_check import Probe, probe_server

RETRY = re.compile(r"Connection attempt failed|retrying in [\d.]+ seconds")
CONNECTED = re.compile(r"Connection successful|SuperNode ID")
REMIND_EVERY_S = 300.0


class ConnectionWatch:
    """Says why the site cannot connect, once per outage, then at most every ``remind_every_s``."""

    def __init__(
        self,
        address: str,
        ca_cert: Path,
        site_yaml: Path,
        say: Callable[[str], None],
        *,
        remind_every_s: float = REMIND_EVERY_S,
        probe: Callable[[str, Path], Probe] = probe_server,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address, self.ca_cert, self.site_yaml = address, Path(ca_cert), Path(site_yaml)
        self.say, self.remind_every_s, self._probe, self._clock = say, remind_every_s, probe, clock
        self.failing_since: float | None = None  # start of the current outage
        self._said_at: float | None = None
        self.said: list[str] = []  # every sentence said (tests)

    def report(self, probe: Probe) -> None:
        """Say ``probe``'s cause now (also called by the pre-start check when the server is unreachable)."""
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        minutes = (now - self.failing_since) / 60
        lead = "cannot connect" if minutes < 1 else f"still not connected after {minutes:.0f} min"
        if probe.ok:  # port and certificate are fine: what fails is behind them
            cause = f"{probe.advice(self.site_yaml)}, but its Fleet requests fail (the server may be restarting)"
        else:
            cause = probe.advice(self.site_yaml)
        line = f"{lead}: {cause}; the SuperNode keeps retrying"
        self._said_at = now
        self.said.append(line)
        self.say(line)

    def on_line(self, line: str) -> bool:
        """Watch one SuperNode log line; True when it should be kept off the console (a retry line)."""
        if CONNECTED.search(line):
            self.failing_since = self._said_at = None
            return False
        if not RETRY.search(line):
            return False
        if self._said_at is None or self._clock() - self._said_at >= self.remind_every_s:
            self.report(self._probe(self.address, self.ca_cert))
        return True
