"""The generalization benchmark for 3D segmentation, small: CT sites from the synthetic cohort, FedAvg on Ray.

``fedrad-bench generalization --task segmentation3d`` at its smallest (the CT
cohort's 3 training sites and its unseen one, as ``fedrad-site synth --modality
ct`` writes them, 4 patients each at 32 px; 1 seed, FedAvg, 1 round of 1 epoch,
16³ patches at 12 mm): every arm runs, every model is scored by Dice per label
(and their mean) on every test set, each label has its own summary and paired
rows, the consortium's task settings reached the federated sites (the run
config carries them), and the sites went through the production ClientApp.
It checks structure and ranges, not the issue's target (docs/benchmarks.md
has the figures at a meaningful size).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.audit import verify
from shared.synth.ct_cohort import write_ct_cohort

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def test_segmentation3d_benchmark_scores_dice_per_label_on_ct_sites(tmp_path: Path) -> None:
    sites = {s.name: s.path for s in write_ct_cohort(tmp_path / "cohort", 3, seed=1, patients_per_site=4, size=32)}
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks.cli", "generalization", "--task", "segmentation3d"]
    cmd += ["--labels", "liver,lesion", "--task-options", "spacing=12,patches_per_case=2"]
    for name in ("site-1", "site-2", "site-3"):
        cmd += ["--sites", str(sites[name])]
    cmd += ["--unseen", str(sites["unseen-1"]), "--strategies", "fedavg", "--seeds", "1", "--rounds", "1"]
    cmd += ["--local-epochs", "1", "--image-size", "16", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert json.loads(proc.stdout)["verdict"] == results["verdict"]
    assert results["metric"] == "dice-mean" and results["config"]["model"] == "unet"
    assert results["config"]["task_options"] == {"spacing": "12", "patches_per_case": "2"}
    assert results["columns"] == ["site-1 test", "site-2 test", "site-3 test", "unseen-1"]
    assert results["test_sizes"]["unseen-1"] == 4  # every unseen patient's labelled axial series, none of the junk
    models = {"pooled", "local site-1", "local site-2", "local site-3", "fedavg"}  # instance norm: no AdaBN rows
    labels = {"dice-liver", "dice-lesion"}
    assert set(results["matrix"]) == models
    assert set(results["metric_matrices"]) == set(results["metric_models"]) == set(results["metric_paired"]) == labels
    for matrix in [results["matrix"], *results["metric_matrices"].values()]:
        assert set(matrix) == models
        for model, row in matrix.items():
            assert set(row) == set(results["columns"]), model
            assert all(0.0 <= cell["mean"] <= 1.0 for cell in row.values()), (model, row)
    for summary in [results["models"], *results["metric_models"].values()]:
        assert summary["pooled"]["ratio_to_pooled"] == 1.0 and summary["fedavg"]["ratio_to_pooled"] is not None
    for pairs in [results["paired"], *results["metric_paired"].values()]:  # fedavg vs each local and vs pooled
        against = {(p["against"], p["column"]) for p in pairs if p["model"] == "fedavg"}
        assert {("local site-1", "site-1 test"), ("local site-3", "unseen-1"), ("pooled", "site mean")} <= against
    report = (out / "report.html").read_text()
    assert "3D segmentation of liver, lesion" in report and "Dice lesion" in report and "AUC" not in report
    for site in ("site-1", "site-2", "site-3"):  # the production ClientApp answered, under the task's settings
        summary = verify(out / "sites" / site / "work" / "audit" / "outbound.jsonl")
        assert summary.by_type.get("train") == 1 and summary.violations == 0, summary
        # one preprocessing only: the benchmark's arms and the federated sites cached each series at 12 mm once
        # (a site that missed the run config's task options would have cached them again at 1.5 mm)
        assert len(list((out / "cache" / site).rglob("*.image.npy"))) == 4, site
