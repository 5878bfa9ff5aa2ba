"""The generalization benchmark, small: real DICOM sites, real training, federated runs on Flower's Ray engine.

``fedrad-bench generalization`` at its smallest (2 training sites, 1 unseen, 1
seed, FedAvg and FedBN with and without the histogram-equalisation and
scanner-augmentation levers, 2 rounds of 1 epoch on a cosine schedule, 32×32): every arm runs, every model
is scored on every test set, the report is written, and the simulated sites
went through the production ClientApp (approval, guard, audit log).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from client.audit import verify
from shared.modelfile import load_model_file
from shared.synth import write_cohort

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def test_benchmark_scores_every_model_on_every_site(tmp_path: Path) -> None:
    cohort = {
        s.name: s.path
        for s in write_cohort(tmp_path / "cohort", n_sites=2, unseen=1, scale=0.08, seed=2, test_images=10)
    }
    shutil.rmtree(cohort["site-2/test"])  # site-1 is scored on its test export, site-2 on its held-out patients
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.cli",
        "generalization",
        "--sites",
        str(cohort["site-1"]),
        "--sites",
        str(cohort["site-2"]),
        "--unseen",
        str(cohort["unseen-1"]),
        "--strategies",
        "fedavg,fedbn",
        "--seeds",
        "1",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--image-size",
        "32",
        "--finetune-epochs",
        "1",
        "--equalize-lever",
        "--scanner-augment-lever",
        "1.0",
        "--lr-schedule",
        "cosine",
        "--server-momentum-lever",
        "0.5",
        "--average-rounds",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert json.loads(proc.stdout)["verdict"] == results["verdict"]
    assert results["columns"] == ["site-1 test", "site-2 test", "unseen-1"]
    assert results["test_sets"] == {"site-1 test": "test export", "site-2 test": "held-out patients"}
    assert results["test_sizes"]["site-1 test"] == 10 and results["test_sizes"]["unseen-1"] == 16
    federated = {"fedavg", "fedbn", "fedbn + momentum"} | {
        f"{arm} + {lever}"
        for arm in ("fedavg", "fedbn")
        for lever in ("equalize", "scanner-aug", "equalize + scanner-aug")
    }
    assert set(results["matrix"]) == {
        "pooled",
        "local site-1",
        "local site-2",
        "fedavg + AdaBN",
        "fedbn + AdaBN",
        "fedavg + finetune",
        "fedbn + finetune",
        *federated,
    } | {f"pooled + {lever}" for lever in ("equalize", "scanner-aug", "equalize + scanner-aug")} | {
        f"{row} + round average" for row in federated
    }  # every federated run also as the mean of its 2 rounds' models

    for strategy in (
        "fedavg",
        "fedbn",
    ):  # fine-tuning changes the model at home; an unseen site has no labels to tune on
        assert results["matrix"][f"{strategy} + finetune"]["unseen-1"] == results["matrix"][strategy]["unseen-1"]
    pairs = {(p["model"], p["against"], p["column"]) for p in results["paired"]}
    assert ("fedbn", "fedavg", "site mean") in pairs and ("fedbn", "fedavg", "unseen-1") in pairs
    for model in ("pooled", "fedavg", "fedbn"):  # both levers act at the training sites and the unseen one
        for lever in ("equalize", "scanner-aug", "equalize + scanner-aug"):
            assert {(f"{model} + {lever}", model, "site mean"), (f"{model} + {lever}", model, "unseen-1")} <= pairs
        both = f"{model} + equalize + scanner-aug"  # and what the augmentation adds to equalisation
        assert {(both, f"{model} + equalize", "site mean"), (both, f"{model} + equalize", "unseen-1")} <= pairs
    for row in ("fedavg", "fedbn + equalize + scanner-aug"):
        assert {(f"{row} + round average", row, "site mean"), (f"{row} + round average", row, "unseen-1")} <= pairs
    assert results["verdict"]["best_federated"] in ("fedavg", "fedbn")  # the matched budget: plain strategies only
    assert load_model_file(out / "runs" / "fedavg-equalize-seed0" / "latest.pt").architecture == "smallcnn-eq"
    assert load_model_file(out / "runs" / "fedavg-seed0" / "latest.pt").architecture == "smallcnn"
    assert (
        load_model_file(out / "runs" / "fedbn-equalize-scanner-aug-seed0" / "latest.pt").architecture == "smallcnn-eq"
    )
    assert results["config"]["scanner_augment_lever"] == 1.0
    assert ("fedbn + momentum", "fedbn", "site mean") in pairs  # fedavg takes no server momentum: no row
    momentum = torch.load(out / "runs" / "fedbn-momentum-seed0" / "strategy-state.pt", weights_only=False)
    assert set(momentum) == {"momentum_vector"}  # the server stepped with momentum, and a resume would keep it
    assert not (out / "runs" / "fedbn-seed0" / "strategy-state.pt").exists()
    assert results["config"]["lr_schedule"] == "cosine"
    best = results["verdict"]["best_federated"]
    assert {(best, "local site-1", "site-1 test"), (best, "local site-2", "unseen-1")} <= pairs
    assert all(len(cell["values"]) == 1 for row in results["matrix"].values() for cell in row.values())
    assert "Paired differences" in (out / "report.html").read_text()
    for model, row in results["matrix"].items():
        assert set(row) == set(results["columns"]), model
        for col, cell in row.items():
            assert cell["mean"] is None or 0.0 <= cell["mean"] <= 1.0, (model, col)
    assert results["models"]["pooled"]["ratio_to_pooled"] == 1.0
    assert "Flower simulation engine" in results["engine"]
    assert {"auc-by-model.png", "cross-site-matrix.png", "report.html"} <= {p.name for p in out.iterdir()}
    assert "Cross-site matrix" in (out / "report.html").read_text()
    for site in ("site-1", "site-2"):  # the production ClientApp answered: its audit log chains and shows the rounds
        summary = verify(out / "sites" / site / "work" / "audit" / "outbound.jsonl")
        assert summary.by_type.get("train") == 18 and summary.violations == 0, summary  # 9 federated runs × 2 rounds
    assert not any(math.isnan(v) for v in [results["models"]["fedavg"]["site_mean"]["mean"] or 0.0])
