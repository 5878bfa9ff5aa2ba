"""``task.init_weights`` as a plain state dict, through the run: the coordinator's import, round 1, provenance, card,
export of the new backbones, and ``fedrad-site train-local --model resnet50 --init-weights``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from server.app import RunConfigError, RunSettings, initial_weights
from server.checkpoints import RunDir, RunTask
from server.consortium import parse_consortium
from server.enrollment import init_consortium
from server.export import export_model
from server.init_weights import INIT_FILE, prepare_init_weights
from shared.config import ConfigError
from shared.modelfile import load_model_file
from shared.models import build_model
from shared.tasks import TaskSpec
from tests.torchvision_files import torchvision_state

pytestmark = pytest.mark.timeout(300)
CLASSES = ("normal", "nodule", "mass")  # three outputs: an ImageNet or two-class head cannot fit


def _colleague_file(path: Path) -> dict:
    """A colleague's smallcnn checkpoint for two classes, saved from DataParallel inside {'state_dict': ...}."""
    torch.manual_seed(11)
    state = build_model("smallcnn", 2, 32).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, path)
    return state


def _config(init: Path):  # noqa: ANN202 - ConsortiumConfig
    task = {"classes": list(CLASSES), "model": "smallcnn", "image_size": 32, "init_weights": str(init)}
    return parse_consortium({"name": "Init Net", "address": "127.0.0.1:9443", "seed": 3, "task": task})


def test_start_imports_a_plain_state_dict_once_and_every_round_keeps_its_story(tmp_path: Path) -> None:
    source = _colleague_file(tmp_path / "colleague.pt")
    cfg = _config(tmp_path / "colleague.pt")
    run_dir = tmp_path / "runs" / "r1"
    said: list[str] = []
    init_file = prepare_init_weights(cfg, run_dir, resume=False, say=said.append)

    # the coordinator sees the report before anything starts
    assert init_file == run_dir / INIT_FILE
    text = "\n".join(said)
    assert "colleague.pt" in text and "stripped 'module.'" in text and "module.classifier.weight" in text
    converted = load_model_file(init_file)
    assert converted.provenance["kind"] == "imported" and converted.classes == list(CLASSES)
    story = converted.provenance["extra"]["imported_from"]
    assert story["file"] == str(tmp_path / "colleague.pt") and story["left_at_init"] == [
        "classifier.weight",
        "classifier.bias",
    ]
    got = converted.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.items() if not k.startswith("classifier."))

    # the ServerApp starts round 1 from that file; every round file and the card say where it came from
    settings = RunSettings.from_run_config({**cfg.to_run_config(run_dir=run_dir), "init-weights": str(init_file)})
    state, start = initial_weights(settings, settings.task.build_model())
    assert all(torch.equal(state[k], got[k]) for k in got) and start == story
    task = RunTask(settings.task, "Init Net", "fedavg", 3, init_weights=start)
    RunDir(run_dir).prepare(task, resume=False)
    RunDir(run_dir).save_round(1, state, task=task, num_server_rounds=1, metrics={"round": 1, "sites_answered": 2})
    assert load_model_file(run_dir / "round-0001.pt").provenance["extra"]["init_weights"] == story
    consortium = tmp_path / "consortium"
    init_consortium(consortium, "Init Net", "127.0.0.1:9443")
    export_model(consortium, tmp_path / "global.pt", run_dir=run_dir)
    card = (tmp_path / "global.pt.md").read_text()
    assert "initial weights: the state dict `colleague.pt`" in card and "module.classifier.weight" in card

    # a resumed run keeps the file it made; nothing is imported again
    said.clear()
    assert prepare_init_weights(cfg, run_dir, resume=True, say=said.append) == init_file
    assert "imported from" in said[0]


def test_the_serverapp_imports_a_plain_state_dict_itself_when_it_gets_one(tmp_path: Path) -> None:
    """Flower's simulation engine has no coordinator in front: the ServerApp imports and says so."""
    source = _colleague_file(tmp_path / "colleague.pt")
    base = {"run-dir": str(tmp_path / "r"), "classes": ",".join(CLASSES), "image-size": 32, "model": "smallcnn"}
    settings = RunSettings.from_run_config({**base, "init-weights": str(tmp_path / "colleague.pt")})
    torch.manual_seed(0)
    fresh = settings.task.build_model()
    state, start = initial_weights(settings, fresh)
    assert torch.equal(state["features.0.weight"], source["features.0.weight"])
    assert torch.equal(state["classifier.weight"], fresh.state_dict()["classifier.weight"])  # head: fresh init
    assert start["kind"] == "state-dict" and start["placed"] == start["tensors"] - 2
    (tmp_path / "noise.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(RunConfigError, match="task.init_weights.*noise.pt"):
        initial_weights(RunSettings.from_run_config({**base, "init-weights": str(tmp_path / "noise.pt")}), fresh)


def test_a_weights_file_that_does_not_fit_stops_start_before_any_site_waits(tmp_path: Path) -> None:
    torch.save(torchvision_state("efficientnet_b0"), tmp_path / "effnet.pt")
    with pytest.raises(ConfigError, match=r"task.init_weights: .*effnet.pt: does not fit smallcnn"):
        prepare_init_weights(_config(tmp_path / "effnet.pt"), tmp_path / "run", resume=False, say=print)
    assert not (tmp_path / "run" / INIT_FILE).exists()


def test_efficientnet_b0_exports_as_onnx_and_torchscript_with_a_card(tmp_path: Path) -> None:
    consortium = tmp_path / "consortium"
    init_consortium(consortium, "Backbone Net", "127.0.0.1:9443")
    spec = TaskSpec("classification", ("normal", "nodule"), "efficientnet_b0", 64)
    task = RunTask(spec, "Backbone Net", "fedavg", 0)
    run = RunDir(consortium / "runs" / "r1")
    run.prepare(task, resume=False)
    torch.manual_seed(0)
    run.save_round(1, spec.build_model().state_dict(), task=task, num_server_rounds=1, metrics={"round": 1})
    for fmt in ("onnx", "torchscript"):
        info = export_model(consortium, tmp_path / f"global.{fmt}", run_dir=run.path, fmt=fmt)
        assert info["architecture"] == "efficientnet_b0" and info["max_gap"] <= 1e-5
        card = (tmp_path / f"global.{fmt}.md").read_text()
        assert "`efficientnet_b0`, input 1×64×64" in card and "initial weights: random" in card


def test_train_local_resnet50_from_torchvision_weights_prints_the_import_report(small_cohort, tmp_path: Path) -> None:
    """The site's CLI at 64 px, one epoch: the new name, a torchvision ImageNet file, the report on screen."""
    torch.save(torchvision_state("resnet50", seed=9), tmp_path / "resnet50-imagenet.pt")
    site = small_cohort[0]
    out = tmp_path / "local.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "client", "train-local", "--data", str(site.dicom_dir), "--labels",
         str(site.labels_csv), "--model", "resnet50", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
         "--init-weights", str(tmp_path / "resnet50-imagenet.pt"), "--out", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for text in (
        "placed 265 of 267 tensors of resnet50",
        "conv1.weight: the file's 3 input channels summed",
        "fc.bias",
    ):
        assert text in proc.stdout, text
    loaded = load_model_file(out)
    assert loaded.architecture == "resnet50" and loaded.preprocess.image_size == 64
    start = loaded.provenance["extra"]["init_weights"]
    assert start["file"] == str(tmp_path / "resnet50-imagenet.pt") and start["left_at_init"] == ["fc.weight", "fc.bias"]
    json.dumps(loaded.provenance)  # plain values only


def test_train_local_names_the_size_a_backbone_needs(small_cohort, tmp_path: Path) -> None:
    site = small_cohort[0]
    proc = subprocess.run(
        [sys.executable, "-m", "client", "train-local", "--data", str(site.dicom_dir), "--labels",
         str(site.labels_csv), "--model", "densenet121", "--image-size", "16", "--out", str(tmp_path / "m.pt")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 2 and "needs at least 32 px" in proc.stderr and "Traceback" not in proc.stderr
