"""The task seam, proved: a task defined only in ``tests/toy_task.py`` trains federated and is evaluated at a site.

Nothing outside ``tests/`` names it. It is registered by the ``FEDRAD_TASK_PLUGINS`` environment variable (the
operator's choice, never the run config's), runs two rounds on Flower's simulation engine with FedRad's
production ServerApp and ClientApp over two synthetic DICOM sites, leaves checkpoints that are model files of
its task, and ``fedrad-site evaluate`` scores the global model at a site as a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.simulation import prepare_site, run_simulated
from client.audit import verify
from shared.modelfile import load_model_file
from shared.synth import cohort_profiles, write_site

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
PLUGIN = "tests.toy_task"


@pytest.fixture()
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The plug-in for this process and every process it starts (SuperLink → Ray workers, the site CLI)."""
    monkeypatch.setenv("FEDRAD_TASK_PLUGINS", PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return dict(os.environ)


def test_a_test_only_task_trains_federated_and_is_evaluated_at_a_site(tmp_path: Path, plugin_env: dict) -> None:
    from tests.toy_task import NAME

    profiles = cohort_profiles(2, unseen=0, seed=3)
    sites = []
    for profile in profiles:
        summary = write_site(tmp_path / "cohort" / profile.name, profile, 60, seed=3)
        sites.append(prepare_site(tmp_path / "sites", profile.name, summary.dicom_dir, None, ["normal", "nodule"], 32))
    run_dir = tmp_path / "run"
    run_simulated(
        {
            "task-type": NAME,
            "labels": "brightness",
            "model": "tinyreg",
            "image-size": 32,
            "classes": "",
            "num-server-rounds": 2,
            "min-sites": 2,
            "batch-size": 8,
            "lr": 0.01,
            "run-dir": str(run_dir),
            "consortium": "Toy",
        },
        sites,
        cpus=2,
    )

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    evaluation = rows[-1]["eval"]
    assert evaluation["sites"] == 2 and evaluation["num-examples"] >= 20
    assert {"mae", "r2", "loss"} <= set(evaluation)  # the task's own keys passed the site's guard and the server
    latest = load_model_file(run_dir / "latest.pt")
    assert (latest.task, latest.outputs, latest.architecture) == (NAME, ["brightness"], "tinyreg")
    state = json.loads((run_dir / "state.json").read_text())
    assert state["task_type"] == NAME and state["best"]["r2"] == pytest.approx(max(r["eval"]["r2"] for r in rows))
    for site in sites:
        audit = verify(site.work_dir / "audit" / "outbound.jsonl")
        assert audit.by_type.get("train") == 2 and audit.violations == 0

    report = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "evaluate",
            "--model",
            str(run_dir / "latest.pt"),
            "--data",
            str(tmp_path / "cohort" / profiles[0].name / "dicom"),
            "--out",
            str(report),
            "--json",
        ],
        cwd=REPO,
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["task"] == NAME and metrics["n"] == 60 and metrics["finite"]
    assert metrics == json.loads((report / "metrics.json").read_text())
