"""Segmentation federated end to end: 2 sites, real Flower processes over TLS, DICOM SEG masks, a MONAI UNet.

The run config comes from a ``consortium.yaml`` task (``type: segmentation``,
``labels: [nodule, lung]``) through :meth:`ConsortiumConfig.to_run_config`, and
runs on the same loopback consortium as the classification tests (SuperLink with
TLS and SuperNode auth, fleet proxy, per site a SuperNode and warm worker over a
synthetic export whose images each have a highdicom SEG beside them).

Asserted: every round completes with both sites; each site's held-out lung Dice
after the last round (read from the site's own audit log, i.e. what it sent) is
well above the untrained network's on the same patients; the aggregate
``dice-*``/``hd95-*`` figures are in the server's metrics history and
checkpoints are segmentation model files; both audit logs verify, and every
metric that left a site is an aggregate key of the task (nothing per case).

``pytest -s`` prints the per-round Dice table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from client.audit import verify
from client.federated import SiteSession, evaluate_round
from client.outbound_guard import ALLOWED_METRICS
from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.consortium import parse_consortium
from server.superlink import stage_app, submit_run
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth import write_cohort
from shared.tasks import get_task
from shared.tasks.segmentation.metric_keys import metric_keys
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

SITES = ("site-1", "site-2")
LABELS = ["nodule", "lung"]
ROUNDS = 2  # each message wave costs a fresh flwr-clientapp process per site (~8-16 s under load)
SEED = 2
CONSORTIUM = {
    "name": "SegConsortium",
    "address": "127.0.0.1:9443",
    "rounds": ROUNDS,
    "local_epochs": 3,
    "batch_size": 8,
    "lr": 0.01,
    "min_sites": 2,
    "round_timeout_s": 180,
    "seed": SEED,
    "strategy": "fedavg",
    "task": {"type": "segmentation", "labels": LABELS, "image_size": 32, "model": "unet"},
}
MIN_GAIN = 0.2  # lung Dice gain over the untrained UNet; measured ~0.5 after 2 rounds (0.41-0.43 -> 0.93-0.95)


def _sent_evaluations(log: Path, run: int) -> dict[int, dict]:
    """round → metrics of this site's evaluation replies in ``run``, from its audit log."""
    out = {}
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["run"] == run and e["type"] == "evaluate":
            out[int(e["round"])] = e["metrics"]
    return out


def test_two_site_segmentation_federation_over_tls(tmp_path: Path) -> None:
    t0 = time.monotonic()
    torch.set_num_threads(1)
    cohort = {
        s.name: s.path
        for s in write_cohort(tmp_path / "cohort", n_sites=2, unseen=0, scale=0.25, seed=5, task="segmentation")
    }
    run_dir = tmp_path / "runs" / "seg"
    run_config = parse_consortium(CONSORTIUM).to_run_config(run_dir=run_dir)
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        lc = start_loopback_consortium(ps, tmp_path, {n: cohort[n] for n in SITES}, image_size=32, name="SegConsortium")
        app_dir = stage_app(tmp_path / "app", REPO, run_config)
        run_id = submit_run(lc.link, app_dir, {})
        with lc.link.control() as control:
            info = control.wait_for_run(run_id, timeout=300, poll=0.5)
        run_s = time.monotonic() - t0
        workers = "\n".join(s.worker.log_tail(15) for s in lc.sites.values() if s.worker is not None)
        assert info["status"] == "finished:completed", (info, workers)
        site_yaml = {n: s.site_yaml for n, s in lc.sites.items()}
    finally:
        started = stop_all_and_check(ps, started)

    # The server: every round with both sites, the segmentation aggregates in its history, UNet checkpoints.
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["sites_answered"] == 2 and r["sites_failed"] == 0 for r in rows), [r["failures"] for r in rows]
    for r in rows:
        assert {"dice-mean", "dice-lung", "dice-nodule", "hd95-mm-lung", "loss"} <= set(r["eval"]), r["eval"]
        assert not any(k.endswith(("-ci-low", "-ci-high")) for k in r["eval"])  # per-site intervals are not averaged
    latest = load_model_file(run_dir / "latest.pt")
    assert (latest.task, latest.labels, latest.architecture) == ("segmentation", LABELS, "unet")
    assert latest.weights_sha256 == rows[-1]["weights_sha256"] and (run_dir / "best.pt").exists()

    # The sites: what each sent, per round; the untrained UNet (the server's round-1 start) on the same patients.
    torch.manual_seed(SEED)
    untrained = get_task("segmentation").build_model("unet", len(LABELS), 32).state_dict()
    allowed = set(ALLOWED_METRICS) | set(metric_keys(LABELS))
    table = {}
    for name in SITES:
        work = tmp_path / "sites" / name / "work"
        log = work / "audit" / "outbound.jsonl"
        summary = verify(log)
        assert summary.violations == 0 and summary.refused == 0, summary
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        for e in entries:  # nothing but aggregate keys of this task ever left
            assert set(e.get("metrics", {})) <= allowed, set(e["metrics"]) - allowed
        sent = _sent_evaluations(log, int(run_id))
        assert sorted(sent) == list(range(1, ROUNDS + 1)), sorted(sent)
        session = SiteSession.open(run_config, {"site-config": str(site_yaml[name]), "site-name": name})
        before = evaluate_round(session.task, untrained, session.data, {"server-round": 0}, None)
        table[name] = (before, sent)
        assert len(session.data.held_out) == sent[ROUNDS]["num-examples"]  # the same held-out patients
        assert sent[ROUNDS]["dice-lung"] > before["dice-lung"] + MIN_GAIN, (name, before["dice-lung"], sent[ROUNDS])

    print(
        f"\nsegmentation federation: {ROUNDS} rounds FedAvg, 2 sites over TLS, UNet 32 px, "
        f"{time.monotonic() - t0:.0f} s in all ({run_s:.0f} s to the finished run)"
    )
    print("held-out lung Dice   untrained " + " ".join(f"round {r}" for r in range(1, ROUNDS + 1)))
    for name, (before, sent) in table.items():
        print(
            f"  {name} (n={sent[ROUNDS]['num-examples']:>2})      {before['dice-lung']:.3f}    "
            + "   ".join(f"{sent[r]['dice-lung']:.3f}" for r in range(1, ROUNDS + 1))
        )
    print(
        "  aggregate               "
        + "   ".join(f"{r['eval']['dice-lung']:.3f}" for r in rows)
        + "   (dice-mean "
        + ", ".join(f"{r['eval']['dice-mean']:.3f}" for r in rows)
        + ")"
    )
