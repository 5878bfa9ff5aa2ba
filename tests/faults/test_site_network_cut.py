"""A site's network cut for longer than Flower's heartbeat: the consortium goes on, the site comes back.

The cut is the whole ``fedrad-site start`` process tree stopped with SIGSTOP
(no packets, no heartbeats, no clean goodbye: what a pulled cable looks like
from the server) for 75 s, longer than the SuperLink's heartbeat patience
(~60 s), then resumed with SIGCONT. Asserted:

* every round during the cut finishes with site-a alone, within
  ``round_timeout_s`` plus aggregation, and records site-b as failed or absent;
* site-b, resumed, answers again in a later round without being restarted
  (its SuperNode reconnects by itself);
* no round is lost or repeated, and the run completes.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from server.checkpoints import read_metrics
from shared.processes import ProcessSet
from shared.synth import SiteSummary
from tests.faults.live import REPO, WIDE, make_consortium, signal_tree, wait_for, wait_rounds
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# Enough rounds that some are left after the resume: once Flower marks site-b unavailable, rounds without it take
# ~6 s, so 9 rounds could all finish inside the 75 s cut (seen once) and site-b would have nothing to rejoin.
ROUNDS = 16
ROUND_TIMEOUT = 25
CUT_S = 75


def test_site_cut_off_past_the_heartbeat_rejoins(tmp_path: Path, small_cohort: list[SiteSummary]) -> None:
    live = make_consortium(tmp_path, small_cohort, rounds=ROUNDS, round_timeout=ROUND_TIMEOUT)
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        server = ps.start("server", live.server_cmd, env=WIDE, cwd=REPO)
        wait_for(server, "listening for sites", 60)
        sites = {n: ps.start(n, cmd, env=WIDE, cwd=REPO) for n, cmd in live.site_cmd.items()}
        wait_rounds(live.runs, 1, 240, server)
        started |= ps.all_procs()
        signal_tree(sites["site-b"], signal.SIGSTOP)
        t_cut = time.monotonic()
        wait_rounds(live.runs, 2, ROUND_TIMEOUT + 90, server)
        time.sleep(max(0.0, CUT_S - (time.monotonic() - t_cut)))
        rows = read_metrics(sorted(live.runs.iterdir())[-1])
        during = rows[1:]  # rounds that started after the cut and finished before the resume
        signal_tree(sites["site-b"], signal.SIGCONT)
        t_back = time.monotonic()
        for r in during:
            assert r["sites_answered"] == 1, r
            assert r["timing"]["train_wave_s"] <= ROUND_TIMEOUT + 5, r["timing"]
        assert server.wait(timeout=ROUND_TIMEOUT * ROUNDS + 120) == 0, server.log_tail(60)
        rows = read_metrics(sorted(live.runs.iterdir())[-1])
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1)), [r["round"] for r in rows]
        after = [r["round"] for r in rows[len(during) + 1 :] if r["sites_answered"] == 2]
        assert after, (
            f"site-b never answered after the cut: {[(r['round'], r['sites_answered']) for r in rows]}\n"
            f"--- site-b ---\n{sites['site-b'].log_tail(40)}"
        )
        assert sites["site-b"].poll() is None, "site-b's process gave up instead of reconnecting"
        print(
            f"\nnetwork cut {CUT_S} s: rounds {[r['round'] for r in during]} finished without site-b during the cut; "
            f"site-b back in round {after[0]}; run done {time.monotonic() - t_back:.0f} s after the resume; "
            f"round seconds {[r['seconds'] for r in rows]}"
        )
    finally:
        for proc in ps.procs:
            signal_tree(proc, signal.SIGCONT)  # a stopped process cannot stop cleanly
        stop_all_and_check(ps, started)
