"""The generalization benchmark with ``--engine deployment``: federated runs on Flower's deployment engine.

The smallest benchmark (2 training sites, 1 unseen, 1 seed, FedAvg and
FedBN with and without the carried site optimizer, 2 rounds of 1 epoch,
32×32) with its federated arms submitted with ``flwr run`` to one loopback
consortium (TLS SuperLink, fleet proxy, a SuperNode and warm worker per
site): every cell is scored, also as each run's 2-round average (FedBN's with the
sites' own normalisation layers), the report says which engine ran, each site's
audit log chains and records the training rounds, the carried runs keep
their optimizer state in the site's work dir, and no process outlives the
benchmark.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from client.audit import verify
from shared.synth import write_cohort

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def _running_under(folder: Path) -> list[str]:
    """Command lines of live processes that mention ``folder`` (site workers, SuperNodes, SuperLink)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text:
            found.append(text)
    return found


def test_benchmark_on_the_deployment_engine(tmp_path: Path) -> None:
    cohort = {s.name: s.path for s in write_cohort(tmp_path / "cohort", n_sites=2, unseen=1, scale=0.08, seed=2)}
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
        "--engine",
        "deployment",
        "--carry-optimizer-lever",
        "--average-rounds",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert json.loads(proc.stdout)["engine"] == results["engine"]
    assert "deployment engine" in results["engine"] and "2 SuperNodes" in results["engine"]
    assert results["config"]["engine"] == "deployment"
    runs = ("fedavg", "fedbn", "fedavg + carried optimizer", "fedbn + carried optimizer")
    for model in (*runs, *(f"{run} + round average" for run in runs)):
        row = results["matrix"][model]
        assert set(row) == {"site-1 test", "site-2 test", "unseen-1"}, model
        for col, cell in row.items():
            assert cell["mean"] is not None and math.isfinite(cell["mean"]), (model, col)
    for site in ("site-1", "site-2"):  # the SuperNodes' ClientApp answered: its audit log chains and shows the rounds
        summary = verify(out / "deployment" / "sites" / site / "work" / "audit" / "outbound.jsonl")
        assert summary.by_type.get("train") == 8 and summary.violations == 0, (
            summary
        )  # 2 strategies × 2 levers × 2 rounds
        work = out / "deployment" / "sites" / site / "work"
        assert list((work / "fedbn").glob("*/*/norm-round-*.pt")), site
        # The carried runs kept each site's AdamW moments in its work dir, one run key per carried run.
        assert len(list((work / "optimizer").glob(f"*/{site}/adamw-round-0002.pt"))) == 2, site
    pairs = {(p["model"], p["against"], p["column"]) for p in results["paired"]}
    assert ("fedbn + carried optimizer", "fedbn", "site mean") in pairs
    assert ("fedbn + carried optimizer + round average", "fedbn + carried optimizer", "unseen-1") in pairs
    assert not _running_under(out / "deployment"), "deployment-engine processes outlived the benchmark"
