"""The generalization benchmark for segmentation, small: DICOM SEG sites, a UNet, FedAvg on Flower's Ray engine.

``fedrad-bench generalization --task segmentation`` at its smallest (2 training
sites, 1 unseen, 1 seed, FedAvg, 2 rounds of 1 epoch, 32×32): every arm runs,
every model is scored by Dice per label (and their mean) on every test set,
the report names Dice, and the simulated sites went through the production
ClientApp (approval, guard, audit log). One training site and the unseen site
are segmentation-only: their site.yaml has no label CSV.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.audit import verify
from shared.synth import write_cohort

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def test_segmentation_benchmark_scores_dice_per_label(tmp_path: Path) -> None:
    cohort = {
        s.name: s.path
        for s in write_cohort(tmp_path / "cohort", n_sites=2, unseen=1, scale=0.06, seed=3, task="segmentation")
    }
    for name in ("site-2", "unseen-1"):  # segmentation-only sites: a site.yaml with data and no label CSV
        (tmp_path / "yaml" / name).mkdir(parents=True)
        (tmp_path / "yaml" / name / "site.yaml").write_text(f"data: {cohort[name] / 'dicom'}\nthreads: 1\n")
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.cli",
        "generalization",
        "--task",
        "segmentation",
        "--labels",
        "nodule,lung",
        "--sites",
        str(cohort["site-1"]),
        "--sites",
        str(tmp_path / "yaml" / "site-2"),
        "--unseen",
        str(tmp_path / "yaml" / "unseen-1"),
        "--strategies",
        "fedavg",
        "--seeds",
        "1",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert json.loads(proc.stdout)["verdict"] == results["verdict"]
    assert results["metric"] == "dice-mean" and results["config"]["model"] == "unet"
    assert results["columns"] == ["site-1 test", "site-2 test", "unseen-1"]
    models = {"pooled", "local site-1", "local site-2", "fedavg"}  # no AdaBN rows: the UNet has no BatchNorm
    assert set(results["matrix"]) == models
    assert set(results["metric_matrices"]) == {"dice-nodule", "dice-lung"}
    for matrix in [results["matrix"], *results["metric_matrices"].values()]:
        assert set(matrix) == models
        for model, row in matrix.items():
            assert set(row) == set(results["columns"]), model
            assert all(0.0 <= cell["mean"] <= 1.0 for cell in row.values()), (model, row)
    assert results["models"]["pooled"]["ratio_to_pooled"] == 1.0
    assert {"dice-by-model.png", "cross-site-matrix.png", "report.html"} <= {p.name for p in out.iterdir()}
    report = (out / "report.html").read_text()
    assert "Dice (mean over labels)" in report and "Dice lung" in report and "AUC" not in report
    for site in ("site-1", "site-2"):  # the production ClientApp answered: its audit log chains and shows the rounds
        summary = verify(out / "sites" / site / "work" / "audit" / "outbound.jsonl")
        assert summary.by_type.get("train") == 2 and summary.violations == 0, summary
