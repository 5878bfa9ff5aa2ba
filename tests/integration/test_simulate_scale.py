"""``fedrad-bench scale --sites N``: N synthetic hospitals on Flower's simulation engine, production apps.

Small (3 sites × 10 images, 2 rounds) but whole: the sites are written as real
DICOM, every simulated site goes through code approval, training, the outbound
guard and its audit log, and the figures the scale benchmark relies on (rounds,
upload bytes, peak memory) come back in ``--json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.audit import verify
from shared.models import build_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def test_simulate_three_sites_reports_rounds_bytes_and_memory(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.cli",
        "scale",
        "--sites",
        "3",
        "--images-per-site",
        "10",
        "--rounds",
        "2",
        "--out",
        str(tmp_path),
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["sites"] == 3 and result["images"] == 30 and result["rounds"] == 2
    model_bytes = sum(t.numel() * t.element_size() for t in build_model("smallcnn", 2, 64).state_dict().values())
    assert result["upload_bytes_per_round"] == 3 * model_bytes  # every site sent exactly the model, nothing else
    assert result["peak_rss_mb"] > 100 and result["seconds_per_round"] > 0
    logs = sorted(tmp_path.glob("run-*/sites/site-*/work/audit/outbound.jsonl"))
    assert len(logs) == 3
    for log in logs:
        summary = verify(log)  # raises on a broken chain
        assert summary.by_type.get("train") == 2 and summary.violations == 0 and summary.refused == 0, log


def test_simulate_refuses_an_unknown_strategy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cli",
            "scale",
            "--sites",
            "2",
            "--strategy",
            "fedsgd",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "fedsgd" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
