"""The site data scientist's workflow as real processes: synth → check → train-local → evaluate."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared.modelfile import load_model_file

CLI = [sys.executable, "-m", "client"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if args[0] in ("train-local", "evaluate", "finetune"):  # one thread: tests share the machine's cores
        args = (*args, "--threads", "1")
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, env=env)


def site_args(site) -> list[str]:
    return ["--data", str(site.dicom_dir), "--labels", str(site.labels_csv)]


@pytest.fixture(scope="module")
def trained(small_cohort, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "local.pt"
    proc = run(
        "train-local",
        *site_args(small_cohort[0]),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--site-name",
        "site-1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_train_local_writes_a_self_describing_model(trained) -> None:
    path, summary = trained
    assert summary["train_images"] > 0 and summary["val_images"] > 0
    assert len(summary["history"]) == 3
    loaded = load_model_file(path)
    assert loaded.classes == ["normal", "nodule"]
    assert loaded.preprocess.image_size == 64
    assert loaded.provenance["trained_by"] == "site-1" and loaded.provenance["kind"] == "local"
    assert loaded.weights_sha256 == summary["weights_sha256"]


def test_evaluate_writes_report_and_prints_metrics(trained, small_cohort, tmp_path: Path) -> None:
    model, _ = trained
    unseen = small_cohort[-1]
    report = tmp_path / "report"
    proc = run(
        "evaluate", "--model", str(model), *site_args(unseen), "--out", str(report), "--json", "--bootstrap", "200"
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert 0.0 <= metrics["auc"] <= 1.0
    assert metrics["auc_ci95"][0] <= metrics["auc"] <= metrics["auc_ci95"][1]
    assert sum(metrics["n_per_class"].values()) == unseen.n_images
    for name in ("metrics.json", "roc.png", "calibration.png", "confusion.png", "report.html", "predictions.csv"):
        assert (report / name).stat().st_size > 0, name
    with open(report / "predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == unseen.n_images
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in report.iterdir()}
    assert modes == dict.fromkeys(modes, 0o600), modes  # per-case results: owner-only from creation
    assert json.loads((report / "metrics.json").read_text())["auc"] == metrics["auc"]


def test_evaluate_explain_adds_grad_cam_overlays_to_the_report(trained, small_cohort, tmp_path: Path) -> None:
    model, _ = trained
    report = tmp_path / "report"
    proc = run(
        "evaluate",
        "--model",
        str(model),
        *site_args(small_cohort[-1]),
        "--out",
        str(report),
        "--json",
        "--bootstrap",
        "0",
        "--explain",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["explained_cases"] == 2
    assert (report / "explain-gradcam.png").stat().st_size > 10_000
    assert stat.S_IMODE((report / "explain-gradcam.png").stat().st_mode) == 0o600  # patients' images
    assert "Grad-CAM" in (report / "report.html").read_text()


def test_finetune_scores_the_global_model_before_and_after_on_the_same_patients(
    trained, small_cohort, tmp_path: Path
) -> None:
    from shared.modelfile import load_model_file

    model, _ = trained
    out = tmp_path / "tuned.pt"
    proc = run(
        "finetune",
        "--model",
        str(model),
        *site_args(small_cohort[1]),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--lr",
        "0.001",
        "--bootstrap",
        "100",
        "--site-name",
        "site-b",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["test_images"] > 0 and s["finetune_images"] > 0
    assert s["test_images"] + s["finetune_images"] == small_cohort[1].n_images
    assert s["auc_change"] == pytest.approx(s["after"]["auc"] - s["before"]["auc"], abs=1e-3)
    tuned = load_model_file(out)
    assert (
        tuned.provenance["kind"] == "finetuned"
        and tuned.provenance["extra"]["base_model_sha256"] == s["base_model_sha256"]
    )
    assert tuned.weights_sha256 != s["base_model_sha256"]


def test_evaluate_rejects_a_file_that_is_not_a_model(small_cohort, tmp_path: Path) -> None:
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"not a model at all")
    proc = run("evaluate", "--model", str(bogus), *site_args(small_cohort[0]), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "weights.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_train_local_refuses_single_class_data(small_cohort, tmp_path: Path) -> None:
    site = small_cohort[0]
    labels = tmp_path / "one-class.csv"
    labels.write_text(site.labels_csv.read_text().replace("nodule", "normal"))
    proc = run("train-local", "--data", str(site.dicom_dir), "--labels", str(labels), "--out", str(tmp_path / "m.pt"))
    assert proc.returncode == 2
    assert "cannot train" in proc.stderr and not (tmp_path / "m.pt").exists()


def test_synth_command_writes_sites(tmp_path: Path) -> None:
    proc = run("synth", str(tmp_path / "c"), "--sites", "2", "--scale", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [s["name"] for s in summary["sites"]] == ["site-1", "site-2"]
    for s in summary["sites"]:
        assert (Path(s["path"]) / "labels.csv").exists()
