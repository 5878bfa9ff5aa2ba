"""``fedrad-server export``: a verified copy, TorchScript and ONNX graphs that match the checkpoint, a model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from server.checkpoints import RunDir, RunTask
from server.enrollment import enroll_site, init_consortium
from server.export import export_model
from shared.config import ConfigError
from shared.modelfile import load_model_file
from shared.models import build_model
from shared.tasks import TaskSpec

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = tmp_path_factory.mktemp("export") / "consortium"
    init_consortium(c, "Export Net", "127.0.0.1:9443")
    for name in ("st-marys", "city-general"):
        enroll_site(c, name)
    torch.manual_seed(0)
    model = build_model("smallcnn", 2, 32)
    run = RunDir(c / "runs" / "r1")
    task = RunTask(TaskSpec("classification", ("normal", "nodule"), "smallcnn", 32), "Export Net", "fedavg", 0)
    run.prepare(task, resume=False)
    metrics = {"round": 1, "sites_answered": 2, "eval": {"auc": 0.71, "accuracy": 0.66, "num-examples": 40}}
    run.save_round(
        1,
        model.state_dict(),
        task=task,
        num_server_rounds=1,
        metrics=metrics,
        eval_auc=0.71,
        privacy={"epsilon": 7.9, "delta": 1e-5, "noise_multiplier": 1.2, "clipping_norm": 0.5},
    )
    return c


def test_pt_export_is_the_verified_model_file_with_a_card(consortium: Path, tmp_path: Path) -> None:
    info = export_model(consortium, tmp_path / "global.pt", run_dir=consortium / "runs" / "r1")
    assert load_model_file(tmp_path / "global.pt").weights_sha256 == info["weights_sha256"]
    card = (tmp_path / "global.pt.md").read_text()
    for text in (
        "## Intended use",
        "city-general",
        "st-marys",
        "ε = 7.9",
        "AUC 0.710",
        "## Known limitations",
        info["weights_sha256"],
    ):
        assert text in card, text


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_graph_export_gives_the_checkpoints_probabilities(consortium: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"global.{fmt}"
    info = export_model(consortium, out, run_dir=consortium / "runs" / "r1", fmt=fmt)
    assert info["max_gap"] <= 1e-5
    model = load_model_file(consortium / "runs" / "r1" / "latest.pt").model.eval()
    images = torch.rand((5, 1, 32, 32), generator=torch.Generator().manual_seed(7))  # not the images export checked
    with torch.no_grad():
        expected = torch.softmax(model(images), 1).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(images).detach().numpy()
    else:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-5 and got.shape == (5, 2)
    assert fmt in (tmp_path / f"global.{fmt}.md").read_text()


def test_unknown_format_is_a_clear_error(consortium: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "export",
            str(consortium),
            "--out",
            str(tmp_path / "m"),
            "--format",
            "tflite",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "tflite" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert json.dumps(proc.returncode)


def test_init_weights_start_round_one_from_a_local_model_file(consortium: Path) -> None:
    """task.init_weights (transfer learning): the ServerApp starts from the file's weights; a wrong task is named."""
    from server.app import RunConfigError, RunSettings, initial_state

    path = consortium / "runs" / "r1" / "latest.pt"
    base = {"run-dir": "/tmp/r", "classes": "normal,nodule", "image-size": 32, "model": "smallcnn"}
    fresh = build_model("smallcnn", 2, 32)
    state = initial_state(RunSettings.from_run_config({**base, "init-weights": str(path)}), fresh)
    expected = load_model_file(path).model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert initial_state(RunSettings.from_run_config(base), fresh) is not None
    with pytest.raises(RunConfigError, match="init_weights"):
        initial_state(
            RunSettings.from_run_config({**base, "image-size": 64, "init-weights": str(path)}),
            build_model("smallcnn", 2, 64),
        )


def test_card_shows_each_sites_auc_with_its_interval_from_crossval(consortium: Path, tmp_path: Path) -> None:
    xval = {
        "time": "2026-11-26T09:00:00+00:00",
        "model": "latest.pt",
        "sites": ["city-general", "st-marys"],
        "matrix": {
            "global": {
                "city-general": {
                    "auc": 0.912,
                    "auc-examples": 120,
                    "num-examples": 120,
                    "auc-ci-low": 0.861,
                    "auc-ci-high": 0.955,
                },
                "st-marys": {"error": "no reply within 60 s"},
            }
        },
    }
    (tmp_path / "crossval.json").write_text(json.dumps(xval))
    export_model(consortium, tmp_path / "g.pt", run_dir=consortium / "runs" / "r1", crossval=tmp_path / "crossval.json")
    card = (tmp_path / "g.pt.md").read_text()
    assert "| global | 0.912 [0.861–0.955] (n=120) | no reply within 60 s |" in card
    (tmp_path / "bad.json").write_text(json.dumps({"matrix": {}}))
    with pytest.raises(ConfigError, match="--crossval .*bad.json: not a crossval.json"):
        export_model(consortium, tmp_path / "g2.pt", run_dir=consortium / "runs" / "r1", crossval=tmp_path / "bad.json")


def test_a_segmentation_model_exports_as_onnx_with_a_sigmoid_map_per_label(tmp_path: Path) -> None:
    """The task decides the exported graph's output: a probability map per segment label, matching the checkpoint."""
    from shared.tasks import get_task

    c = tmp_path / "consortium"
    init_consortium(c, "Seg Export", "127.0.0.1:9443")
    torch.manual_seed(0)
    model = get_task("segmentation").build_model("unet", 2, 32)
    run = RunDir(c / "runs" / "r1")
    task = RunTask(TaskSpec("segmentation", ("nodule", "lung"), "unet", 32), "Seg Export", "fedavg", 0)
    run.prepare(task, resume=False)
    run.save_round(1, model.state_dict(), task=task, num_server_rounds=1, metrics={"round": 1, "eval": {}})
    result = export_model(c, tmp_path / "seg.onnx", fmt="onnx")
    assert result["max_gap"] is not None and result["max_gap"] < 1e-5
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(tmp_path / "seg.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x)).numpy()
    assert got.shape == (2, 2, 32, 32) and np.abs(got - expected).max() < 1e-4
    assert "probability map per label" in Path(result["model_card"]).read_text()
