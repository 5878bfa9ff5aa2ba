"""Multi-label findings federated end to end: 2 sites, real Flower processes over TLS, CheXpert-style label CSVs.

The run config comes from a ``consortium.yaml`` task (``type: multilabel``, four findings, ``uncertain: ones``)
and runs on the loopback consortium of the other federation tests (SuperLink with TLS and SuperNode auth, fleet
proxy, per site a SuperNode and warm worker) over synthetic exports whose label CSVs have one column per finding
with uncertain and blank entries. Sites keep ``min_count`` 4 (small held-out parts).

Asserted: the round completes with both sites; the per-finding aggregates (``auc-<finding>``, ``prevalence-<f>``,
``auc-micro``) are in the server's metrics history, the per-site intervals are not; checkpoints are multilabel
model files that remember the uncertainty policy; each site sent a finding's figures exactly when both its
positives and its negatives reach ``min_count`` (``min_count`` per finding, checked against the site's own
held-out cases); both audit logs verify and every metric that left a site is an aggregate key of the task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from client.audit import verify
from client.federated import SiteSession
from client.outbound_guard import ALLOWED_METRICS
from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.consortium import parse_consortium
from server.superlink import stage_app, submit_run
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth import write_cohort
from shared.synth.findings import FINDINGS
from shared.tasks.multilabel.metric_keys import metric_keys
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SITES = ("site-1", "site-2")
MIN_COUNT = 4
CONSORTIUM = {
    "name": "FindingsNet",
    "address": "127.0.0.1:9443",
    "rounds": 1,
    "local_epochs": 2,
    "batch_size": 16,
    "min_sites": 2,
    "round_timeout_s": 180,
    "seed": 3,
    "strategy": "fedavg",
    "task": {"type": "multilabel", "findings": list(FINDINGS), "uncertain": "ones", "image_size": 32},
}


def test_two_site_multilabel_federation_over_tls(tmp_path: Path) -> None:
    t0 = time.monotonic()
    torch.set_num_threads(1)
    cohort = {
        s.name: s.path
        for s in write_cohort(tmp_path / "cohort", n_sites=2, unseen=0, scale=0.2, seed=3, task="multilabel")
    }
    run_dir = tmp_path / "runs" / "ml"
    run_config = parse_consortium(CONSORTIUM).to_run_config(run_dir=run_dir)
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        lc = start_loopback_consortium(
            ps, tmp_path, {n: cohort[n] for n in SITES}, image_size=32, name="FindingsNet", min_count=MIN_COUNT
        )
        app_dir = stage_app(tmp_path / "app", REPO, run_config)
        run_id = submit_run(lc.link, app_dir, {})
        with lc.link.control() as control:
            info = control.wait_for_run(run_id, timeout=240, poll=0.5)
        run_s = time.monotonic() - t0
        workers = "\n".join(s.worker.log_tail(15) for s in lc.sites.values() if s.worker is not None)
        assert info["status"] == "finished:completed", (info, workers)
        site_yaml = {n: s.site_yaml for n, s in lc.sites.items()}
    finally:
        started = stop_all_and_check(ps, started)

    # The server: the round with both sites, per-finding aggregates in its history, multilabel checkpoints.
    (row,) = read_metrics(run_dir)
    assert row["sites_answered"] == 2 and row["sites_failed"] == 0, row["failures"]
    evaluation = row["eval"]
    assert "auc-micro" in evaluation and any(f"auc-{f}" in evaluation for f in FINDINGS), evaluation
    assert not any("-ci-" in k for k in evaluation)  # a site's own interval is never averaged
    latest = load_model_file(run_dir / "latest.pt")
    assert (latest.task, latest.outputs, latest.task_options) == ("multilabel", list(FINDINGS), {"uncertain": "ones"})

    # The sites: min_count per finding, against each site's own held-out cases; nothing per case left.
    allowed = set(ALLOWED_METRICS) | set(metric_keys(list(FINDINGS)))
    arrived = set()
    for name in SITES:
        log = tmp_path / "sites" / name / "work" / "audit" / "outbound.jsonl"
        summary = verify(log)
        assert summary.violations == 0 and summary.refused == 0, summary
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        for e in entries:
            assert set(e.get("metrics", {})) <= allowed, set(e["metrics"]) - allowed
        (sent,) = [e["metrics"] for e in entries if e["run"] == int(run_id) and e["type"] == "evaluate"]
        held_out = SiteSession.open(run_config, {"site-config": str(site_yaml[name]), "site-name": name}).data.held_out
        assert sent["num-examples"] == len(held_out)
        for f, c in held_out.counts().items():
            enough = min(c["positive"], c["negative"]) >= MIN_COUNT
            assert (f"auc-{f}" in sent) == enough, (name, f, c, sorted(sent))
            if enough:
                assert sent[f"auc-{f}-examples"] == min(c["positive"], c["negative"])
                arrived.add(f)
    assert {f for f in FINDINGS if f"auc-{f}" in evaluation} == arrived  # what the sites sent is what arrived
    print(
        f"\nmultilabel federation: 1 round FedAvg, 2 sites over TLS, SmallCNN 32 px, {len(FINDINGS)} findings, "
        f"{time.monotonic() - t0:.0f} s in all ({run_s:.0f} s to the finished run); aggregate: "
        + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(evaluation.items()) if k.startswith("auc-") and "examples" not in k
        )
    )
