"""Faults in a live consortium, with the real commands: ``fedrad-server start`` and ``fedrad-site start``.

One 6-round run of two sites over TLS on 127.0.0.1, and along the way:

1. site-b is killed (SIGKILL of its whole process tree: a power cut) as round 2
   starts. Round 2 must finish with site-a alone, within ``round_timeout_s``
   plus the aggregation, and record site-b as failed;
2. site-b is started again (a new process with the same key) and must be back
   in a later round;
3. the server is killed (SIGKILL of ``fedrad-server start``, its SuperLink,
   proxy and ServerApp) after round 3 is checkpointed, and restarted with
   ``fedrad-server start --resume``: only rounds 4-6 run, round 4 starts from
   exactly round 3's saved weights (sha256), and no finished round is lost; its MLflow run (``tracking:``) is
   continued, with one step per round and none twice.

When site-b is back depends on timing the test does not control: Flower refuses
a restarted key until the old session's heartbeats lapse (~60 s), and that
clock restarts if the key was re-activated just before the server died (the
SuperLink's database keeps it "online"). Six rounds leave room for either.

Bounded: the test's timeout covers the worst case of every wait.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server.checkpoints import read_metrics
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth import SiteSummary
from tests.faults.live import REPO, WIDE, kill_tree, make_consortium, wait_for, wait_rounds
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROUNDS = 6
ROUND_TIMEOUT = 30


def test_site_killed_rejoins_and_server_resumes(tmp_path: Path, small_cohort: list[SiteSummary]) -> None:
    live = make_consortium(tmp_path, small_cohort, rounds=ROUNDS, round_timeout=ROUND_TIMEOUT, tracking={"mlflow": {}})
    c, server_cmd, site_cmd = live.folder, live.server_cmd, live.site_cmd
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        server = ps.start("server-1", server_cmd, env=WIDE, cwd=REPO)
        wait_for(server, "listening for sites", 60)
        sites = {n: ps.start(n, cmd, env=WIDE, cwd=REPO) for n, cmd in site_cmd.items()}

        # 1. site-b dies as round 2 starts; round 2 goes on with site-a only, bounded by round_timeout_s.
        wait_rounds(c / "runs", 1, 240, server)
        t_kill = time.monotonic()
        started |= ps.all_procs()
        kill_tree(sites["site-b"])
        rows = wait_rounds(c / "runs", 2, ROUND_TIMEOUT + 90, server)
        r2 = rows[1]
        assert r2["sites_answered"] == 1 and r2["sites_failed"] == 1, r2
        assert r2["timing"]["train_wave_s"] <= ROUND_TIMEOUT + 5, r2["timing"]
        round2_after_kill = time.monotonic() - t_kill

        # 2. site-b comes back (new process, same key).
        sites["site-b"] = ps.start("site-b-restarted", site_cmd["site-b"], env=WIDE, cwd=REPO)
        t_back = time.monotonic()

        # 3. the server dies after round 3's checkpoint; --resume continues with round 4 from those weights.
        rows = wait_rounds(c / "runs", 3, ROUND_TIMEOUT + 120, server)
        started |= ps.all_procs()
        kill_tree(server)
        run_dir = sorted((c / "runs").iterdir())[-1]
        saved = load_model_file(run_dir / "round-0003.pt").weights_sha256
        assert json.loads((run_dir / "state.json").read_text())["last_round"] == 3
        t_restart = time.monotonic()
        resumed = ps.start("server-2", [*server_cmd, "--resume"], env=WIDE, cwd=REPO)
        rc = resumed.wait(timeout=240)
        assert rc == 0, resumed.log_tail(80)
        # The killed server's run was stopped before the sites reconnected, so its queued round 4 could not hold them.
        assert "left unfinished by a server process that died" in resumed.log_tail(400), resumed.log_tail(80)
        assert "finished:completed" in resumed.log_text()
        rows = read_metrics(run_dir)
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))  # nothing lost, nothing re-run
        assert rows[3]["start_weights_sha256"] == saved  # round 4 started from round 3's saved weights
        assert load_model_file(run_dir / "latest.pt").provenance["rounds"] == ROUNDS
        _check_one_mlflow_run(c, run_dir)
        rejoined = [r["round"] for r in rows[2:] if r["sites_answered"] == 2]
        assert rejoined, (
            f"site-b never answered again: {[(r['round'], r['sites_answered']) for r in rows]}\n"
            f"--- site-b-restarted ---\n{sites['site-b'].log_tail(40)}\n--- server-2 ---\n{resumed.log_tail(30)}"
        )
        for name, proc in sites.items():
            assert proc.poll() is None, f"{name} stopped: {proc.log_tail()}"  # sites ride out the server crash
        print(
            f"\nfaults: round 2 done {round2_after_kill:.1f} s after site-b was killed "
            f"(train wave {r2['timing']['train_wave_s']:.1f} s, round_timeout_s={ROUND_TIMEOUT}); "
            f"site-b back in round {rejoined[0]} ({time.monotonic() - t_back:.0f} s ago); "
            f"server restart to round {ROUNDS} checkpoint {time.monotonic() - t_restart:.1f} s; "
            f"round seconds {[r['seconds'] for r in rows]}"
        )
    finally:
        started = stop_all_and_check(ps, started)


def _check_one_mlflow_run(c: Path, run_dir: Path) -> None:
    """Tracking rode out the kill: the resumed session continued the same MLflow run, one step per round, none twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{c / 'mlflow.db'}")
    run = client.get_run(json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"])
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run.info.run_id]
    assert run.info.status == "FINISHED"
    for key in ("round/seconds", "round/sites", "train/loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, ROUNDS + 1)), key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/auc")] == [ROUNDS]  # evaluate_every
