"""CT 3D segmentation federated end to end: 2 sites, real Flower processes over TLS, CT series with SEG/RTSTRUCT.

The run config comes from a ``consortium.yaml`` task (``type: segmentation3d``, ``labels: [liver, lesion]``,
8 mm voxels, the soft-tissue window, 16-voxel patches) through :meth:`ConsortiumConfig.to_run_config`, and
runs on the loopback consortium of the other federation tests (SuperLink with TLS and SuperNode auth, fleet
proxy, per site a SuperNode and warm worker at one thread). The sites are a synthetic CT cohort
(:func:`shared.synth.ct_cohort.write_ct_cohort`): DICOM series per patient (site-1 classic CT with DICOM SEG
labels, site-2 Enhanced CT with RTSTRUCT labels), junk series among them; no label CSV.
Sites keep ``min_count`` 1 (one held-out patient each).

Asserted: every round completes with both sites; the aggregate ``dice-mean`` and ``dice-<label>`` are in the
server's metrics history, within [0, 1], the per-site intervals are not; checkpoints are written and the global
model file loads as a ``segmentation3d`` UNet whose task options carry the run's spacing and window; both audit
logs verify and every metric that left a site is an aggregate key of the task (nothing per case). Then
``fedrad-site evaluate`` with the global model at one site writes its report folder (metrics.json, montages).

``pytest -s`` prints the per-round Dice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from client.audit import verify
from client.evaluate import run_evaluate
from client.outbound_guard import ALLOWED_METRICS
from client.site_config import load_site_file
from client.site_start import check_data
from deploy.loopback import REPO, SiteFiles, start_loopback_consortium
from server.checkpoints import read_metrics, round_file_name
from server.consortium import parse_consortium
from server.model_card import model_card
from server.superlink import stage_app, submit_run
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth.ct_cohort import write_ct_cohort
from shared.tasks.segmentation3d.metric_keys import metric_keys
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SITES = ("site-1", "site-2")
LABELS = ["liver", "lesion"]
ROUNDS = 2
PATCH = 16
CONSORTIUM = {
    "name": "CTConsortium",
    "address": "127.0.0.1:9443",
    "rounds": ROUNDS,
    "local_epochs": 2,
    "batch_size": 2,
    "lr": 0.003,
    "min_sites": 2,
    "round_timeout_s": 180,
    "seed": 4,
    "strategy": "fedavg",
    "task": {
        "type": "segmentation3d",
        "labels": LABELS,
        "image_size": PATCH,
        "model": "unet",
        "spacing": 8,
        "window": "soft_tissue",
        "patches_per_case": 4,
        "foreground": 0.67,
    },
}


def test_two_site_ct_segmentation_federation_over_tls(tmp_path: Path) -> None:
    t0 = time.monotonic()
    torch.set_num_threads(1)
    cohort = write_ct_cohort(tmp_path / "cohort", n_sites=2, seed=4, unseen=0, patients_per_site=3, size=32)
    sites = {s.name: SiteFiles(s.path / "dicom", None) for s in cohort}
    run_dir = tmp_path / "runs" / "ct"
    run_config = parse_consortium(CONSORTIUM).to_run_config(run_dir=run_dir)
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        lc = start_loopback_consortium(
            ps, tmp_path, {n: sites[n] for n in SITES}, image_size=PATCH, name="CTConsortium", min_count=1
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

    # The server: every round with both sites, Dice aggregates in [0, 1], checkpoints of a 3D UNet.
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["sites_answered"] == 2 and r["sites_failed"] == 0 for r in rows), [r["failures"] for r in rows]
    for r in rows:
        dice = {k: v for k, v in r["eval"].items() if k.startswith("dice-")}
        assert {"dice-mean", *(f"dice-{x}" for x in LABELS)} <= set(dice), r["eval"]
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in dice.values()), dice
        assert not any(k.endswith(("-ci-low", "-ci-high")) for k in r["eval"])  # per-site intervals stay per site
    assert sorted(p.name for p in run_dir.glob("round-*.pt")) == [round_file_name(r) for r in range(1, ROUNDS + 1)]
    assert [load_model_file(run_dir / round_file_name(r)).weights_sha256 for r in range(1, ROUNDS + 1)] == [
        r["weights_sha256"] for r in rows
    ]
    latest = load_model_file(run_dir / "latest.pt")
    assert (latest.task, latest.labels, latest.architecture) == ("segmentation3d", LABELS, "unet")
    assert latest.task_options["spacing"] == "8x8x8" and latest.task_options["window"] == "soft_tissue"
    assert latest.preprocess.image_size == PATCH
    assert latest.weights_sha256 == rows[-1]["weights_sha256"] and (run_dir / "best.pt").exists()
    patch = (PATCH,) * 3
    assert tuple(latest.model(torch.zeros(1, 1, *patch)).shape) == (1, len(LABELS) + 1, *patch)  # background + labels
    card = model_card(latest, run_dir, {}, list(SITES))  # what `fedrad-server export` writes beside the model
    assert f"input 1×{PATCH}×{PATCH}×{PATCH}" in card and "8×8×8 mm voxels" in card and "CT window soft_tissue" in card

    # The sites: both audit logs verify; only aggregate keys of the task ever left; an evaluation each round.
    allowed = set(ALLOWED_METRICS) | set(metric_keys(LABELS))
    sent = {}
    for name in SITES:
        log = tmp_path / "sites" / name / "work" / "audit" / "outbound.jsonl"
        summary = verify(log)
        assert summary.violations == 0 and summary.refused == 0, summary
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        for e in entries:
            assert set(e.get("metrics", {})) <= allowed, set(e["metrics"]) - allowed
        sent[name] = {
            int(e["round"]): e["metrics"] for e in entries if e["run"] == int(run_id) and e["type"] == "evaluate"
        }
        assert sorted(sent[name]) == list(range(1, ROUNDS + 1)), sorted(sent[name])
        assert all({"dice-mean", "dice-liver", "dice-lesion"} <= set(m) for m in sent[name].values())
    for r in rows:  # the aggregate is the sites' figures weighted by their held-out volumes, nothing else
        n = {name: sent[name][r["round"]]["num-examples"] for name in SITES}
        assert r["eval"]["num-examples"] == sum(n.values())
        for key in ("dice-mean", *(f"dice-{x}" for x in LABELS)):
            expected = sum(sent[name][r["round"]][key] * n[name] for name in SITES) / sum(n.values())
            assert r["eval"][key] == pytest.approx(expected, abs=1e-6), (key, r["eval"], sent)

    # The check `fedrad-site start` makes before joining accepts both CT sites (series + SEG or RTSTRUCT).
    for name in SITES:
        ok, verdict = check_data(load_site_file(site_yaml[name]))
        assert ok and verdict.startswith("ready for 3D segmentation"), (name, verdict)

    # At a site: the global model evaluated on its own volumes; the report stays in its folder.
    report = tmp_path / "sites" / "site-1" / "evaluate"
    metrics = run_evaluate(
        run_dir / "latest.pt", report, config=site_yaml["site-1"], n_bootstrap=50, show_progress=False, threads=1
    )
    assert metrics["task"] == "segmentation3d" and set(metrics["per_label"]) == set(LABELS)
    assert json.loads((report / "metrics.json").read_text())["n_cases"] == metrics["n_cases"] == 3
    written = {p.name for p in report.iterdir()}
    assert {"metrics.json", "report.html", "montage-axial.png", "montage-coronal.png"} <= written, written

    print(
        f"\nCT 3D segmentation federation: {ROUNDS} rounds FedAvg, 2 sites over TLS, 3D UNet {PATCH}^3 patches at 8 mm, "
        f"{time.monotonic() - t0:.0f} s in all ({run_s:.0f} s to the finished run)"
    )
    for r in rows:
        print(
            f"  round {r['round']}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["eval"].items()) if k.startswith("dice-"))
        )
    print(f"  site-1 evaluate: mean Dice {metrics['mean_dice']:.3f} over {metrics['n_cases']} volumes")
