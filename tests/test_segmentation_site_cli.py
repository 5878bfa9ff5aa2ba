"""The site's segmentation workflow as real processes, without a label CSV: check → train-local → evaluate.

A synthetic site whose images each have a DICOM SEG (``nodule``, ``lung``) and
whose site.yaml has no ``labels``: ``check --segments`` matches the SEGs,
``train-local --segments`` writes a segmentation model file, ``evaluate`` with
that file reports Dice/HD95 (mm) per label with CIs, writes the overlay PNG into the
site's report, and the start preflight accepts the site without 2 labelled classes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.modelfile import load_model_file
from shared.synth import write_cohort

LABELS = "nodule,lung"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if args[0] in ("train-local", "evaluate", "finetune"):  # one thread: tests share the machine's cores
        args = (*args, "--threads", "1")
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def seg_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site.yaml (data and image size only, no labels) beside a 20-image synthetic export with SEGs."""
    root = tmp_path_factory.mktemp("segsite")
    site = write_cohort(root / "cohort", n_sites=1, unseen=0, scale=0.05, seed=4, task="segmentation")[0]
    (root / "site.yaml").write_text(yaml.safe_dump({"data": str(site.dicom_dir), "image_size": 32}))
    return root / "site.yaml"


@pytest.fixture(scope="module")
def seg_model(seg_site: Path) -> tuple[Path, dict]:
    out = seg_site.parent / "local-seg.pt"
    proc = run(
        "train-local",
        "--config",
        str(seg_site),
        "--segments",
        LABELS,
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--site-name",
        "site-1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_check_segments_without_a_label_csv(seg_site: Path) -> None:
    proc = run("check", "--config", str(seg_site), "--segments", LABELS, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["segmentation"]["images_with_masks"] == 20


def test_plain_check_of_a_label_free_site_is_the_start_check(seg_site: Path) -> None:
    """`check --config site.yaml` (what the bundle's README says to run) without `labels`: the readiness check
    `start` makes (images and SEGs), not a demand for a label CSV."""
    proc = run("check", "--config", str(seg_site), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["verdict"].startswith("ready for segmentation") and report["labels_file"] is None


def test_classification_commands_name_the_missing_label_csv(seg_site: Path, tmp_path: Path) -> None:
    proc = run("train-local", "--config", str(seg_site), "--out", str(tmp_path / "m.pt"))
    assert proc.returncode == 2 and "labels" in proc.stderr and "Traceback" not in proc.stderr


def test_train_local_writes_a_segmentation_model_file(seg_model: tuple[Path, dict]) -> None:
    path, summary = seg_model
    loaded = load_model_file(path)
    assert loaded.task == "segmentation" and loaded.labels == ["nodule", "lung"] and loaded.architecture == "unet"
    assert summary["train_images"] > 0 and len(summary["history"]) == 3


def test_evaluate_reports_dice_per_label_and_overlays(
    seg_site: Path, seg_model: tuple[Path, dict], tmp_path: Path
) -> None:
    model, _ = seg_model
    report = tmp_path / "report"
    proc = run(
        "evaluate",
        "--model",
        str(model),
        "--config",
        str(seg_site),
        "--out",
        str(report),
        "--json",
        "--bootstrap",
        "100",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics == json.loads((report / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and metrics["n_cases"] == 20
    for label in ("nodule", "lung"):
        s = metrics["per_label"][label]
        assert 0.0 <= s["dice_mean"] <= 1.0
        assert s["dice_ci95"][0] <= s["dice_mean"] <= s["dice_ci95"][1]
    assert metrics["per_label"]["lung"]["dice_mean"] > 0.3  # 3 epochs already find the lungs
    assert (report / "overlays.png").stat().st_size > 5000
    html = (report / "report.html").read_text()
    assert "data:image/png;base64" in html and "lung: Dice" in html and "keep them at the site" in html
    rows = (report / "predictions.csv").read_text().splitlines()
    assert rows[0] == "case,dice_nodule,dice_lung,hd95_mm_nodule,hd95_mm_lung,hd95_px_nodule,hd95_px_lung"
    assert len(rows) == 21
    # the synthetic films have a PixelSpacing: every HD95 is in millimetres, none in pixels
    lung = metrics["per_label"]["lung"]
    assert metrics["n_cases_without_spacing"] == 0 and lung["n_hd95_px"] == 0 and lung["hd95_px_mean"] is None
    assert lung["n_hd95_mm"] > 0 and lung["hd95_mm_mean"] > 0
    assert "lung: HD95, millimetres" in html and "HD95, pixels" not in html
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in report.iterdir()}
    assert modes == dict.fromkeys(modes, 0o600), modes  # per-case results and overlays: owner-only from creation


def test_evaluate_prints_a_dice_table(seg_site: Path, seg_model: tuple[Path, dict], tmp_path: Path) -> None:
    model, _ = seg_model
    proc = run(
        "evaluate", "--model", str(model), "--config", str(seg_site), "--out", str(tmp_path / "r"), "--bootstrap", "50"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Segmentation evaluation on 20 images" in proc.stdout and "Dice 95% CI" in proc.stdout
    assert "HD95 (mm)" in proc.stdout and "HD95 (px)" not in proc.stdout


def test_start_preflight_accepts_a_segmentation_only_site(seg_site: Path) -> None:
    from client.site_config import SiteFileConfig
    from client.site_start import check_data
    from shared.config import parse_model

    values = yaml.safe_load(seg_site.read_text()) | {
        "site_name": "site-1",
        "server_address": "127.0.0.1:9443",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
    }
    cfg = parse_model(SiteFileConfig, values, str(seg_site), seg_site.parent)
    ok, verdict = check_data(cfg)
    assert ok and "segmentation" in verdict and "20 DICOM SEG" in verdict, verdict


def test_finetune_tunes_a_segmentation_model_and_scores_dice_before_and_after(
    seg_site: Path, seg_model: tuple[Path, dict], tmp_path: Path
) -> None:
    """One training loop: a segmentation model fine-tunes at a site like a classifier, scored by its task (Dice)."""
    model, _ = seg_model
    out = tmp_path / "ft.pt"
    proc = run(
        "finetune",
        "--model",
        str(model),
        "--config",
        str(seg_site),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--bootstrap",
        "50",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["headline"] == "dice-mean" and set(summary["before"]) == set(summary["after"])
    assert 0.0 <= summary["before"]["dice-mean"] <= 1.0 and 0.0 <= summary["after"]["dice-mean"] <= 1.0
    tuned = load_model_file(out)
    assert (
        tuned.task == "segmentation" and tuned.labels == ["nodule", "lung"] and tuned.provenance["kind"] == "finetuned"
    )


def test_segmentation_bundle_site_yaml_has_no_label_csv() -> None:
    from client.site_config import SiteFileConfig
    from server.consortium import parse_consortium
    from server.enrollment import site_yaml_template

    seg = parse_consortium(
        {"name": "Seg", "address": "127.0.0.1:9443", "task": {"type": "segmentation", "labels": ["lung"]}}
    )
    values = yaml.safe_load(site_yaml_template(seg, "site-1"))
    assert "labels" not in values and SiteFileConfig.model_validate(values).labels is None
    cls = parse_consortium({"name": "Cls", "address": "127.0.0.1:9443"})
    assert yaml.safe_load(site_yaml_template(cls, "site-1"))["labels"] == "/path/to/labels.csv"
