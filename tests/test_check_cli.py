"""`fedrad-site check` as hospital IT runs it: a real process, real DICOM, JSON and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import dicom_factory as f

CLI = [sys.executable, "-m", "client"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    data = tmp_path / "site" / "dicom"
    rows = ["SOPInstanceUID,label"]
    for i in range(8):
        ds = f.write_image(data / f"P{i}" / f"IM{i}", f.phantom(64, 64, seed=i), patient_id=f"P{i}")
        rows.append(f"{ds.SOPInstanceUID},{'nodule' if i % 2 else 'normal'}")
    f.write_rgb(data / "P0" / "screenshot.dcm")
    (data / "notes.txt").write_text("hello")
    rows.append("1.2.3.4.5.6,normal")
    (tmp_path / "site" / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "site"


def test_check_json_reports_counts_rejections_and_label_problems(site: Path) -> None:
    proc = run(
        "check",
        "--data",
        str(site / "dicom"),
        "--labels",
        str(site / "labels.csv"),
        "--classes",
        "normal,nodule",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["images"] == {"files": 10, "usable": 8, "rejected": 2}
    assert report["classes"] == {"normal": 4, "nodule": 4}
    assert {(r["path"], r["reason"]) for r in report["rejected"]} == {
        ("P0/screenshot.dcm", "not-grayscale"),
        ("notes.txt", "not-dicom"),
    }
    assert report["labels"]["matched"] == 8
    assert report["labels"]["problems"] == [
        {"key": "1.2.3.4.5.6", "reason": "image-missing", "detail": "no image with this key in the data folder"}
    ]
    assert report["unlabelled_images"] == 0
    assert report["modalities"] == {"DX": 8}
    assert "Test^Patient" not in proc.stdout and "P3" not in json.dumps(report["classes"])


def test_check_table_output_and_site_yaml(site: Path) -> None:
    (site / "site.yaml").write_text("data: dicom\nlabels: labels.csv\nkey: SOPInstanceUID\nclasses: [normal, nodule]\n")
    proc = run("check", "--config", str(site / "site.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "Rejected files by reason" in proc.stdout and "not-grayscale" in proc.stdout
    assert "ready to train" in proc.stdout


def test_one_class_only_exits_1(site: Path) -> None:
    labels = site / "labels.csv"
    labels.write_text(labels.read_text().replace("nodule", "normal"))
    proc = run("check", "--data", str(site / "dicom"), "--labels", str(labels), "--classes", "normal,nodule", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


@pytest.mark.parametrize(
    "yaml_text,needle",
    [
        ("data: dicom\nlabels: labels.csv\nlabel_colum: label\n", "unknown key 'label_colum'"),
        ("data: dicom\nlabels: labels.csv\nkey: PatientName\n", "key 'key'"),
        ("data: dicom\nlabels: labels.csv\nimage_size: big\n", "key 'image_size'"),
        ("data: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(site: Path, yaml_text: str, needle: str) -> None:
    (site / "site.yaml").write_text(yaml_text)
    proc = run("check", "--config", str(site / "site.yaml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "site.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_folder_and_labels_exit_2(site: Path, tmp_path: Path) -> None:
    proc = run("check", "--data", str(tmp_path / "nowhere"), "--labels", str(site / "labels.csv"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("check", "--data", str(site / "dicom"), "--labels", str(tmp_path / "no.csv"))
    assert proc.returncode == 2 and "no.csv" in proc.stderr and "not found" in proc.stderr
    proc = run("check", "--labels", str(site / "labels.csv"))
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_check_segments_reports_seg_problems_in_json(tmp_path: Path) -> None:
    """`fedrad-site synth --task segmentation` then `check --segments`: SEGs are matched, and a deleted SEG and an
    unknown task label are reported by file, with what to do."""
    out = tmp_path / "cohort"
    made = run("synth", str(out), "--sites", "1", "--scale", "0.02", "--task", "segmentation", "--json")
    assert made.returncode == 0, made.stderr
    site = out / "site-1"
    segs = sorted((site / "dicom").rglob("SEG0001*"))
    assert segs and len(segs) == len(list((site / "dicom").rglob("IMG0001*")))
    segs[0].unlink()
    res = run(
        "check",
        "--data",
        str(site / "dicom"),
        "--labels",
        str(site / "labels.csv"),
        "--segments",
        "nodule,lung,heart",
        "--json",
    )
    report = json.loads(res.stdout)
    seg = report["segmentation"]
    assert seg["labels"] == ["nodule", "lung", "heart"]
    kinds = seg["problems_by_kind"]
    assert kinds["image-without-seg"]["count"] == 1 and kinds["missing-segment"]["count"] == len(segs) - 1
    assert all(p["what_to_do"] for p in seg["problems"])
    assert report["images"]["rejected"] == len(segs) - 1  # the SEGs themselves are not images
    ok = run(
        "check",
        "--data",
        str(site / "dicom"),
        "--labels",
        str(site / "labels.csv"),
        "--segments",
        "nodule,lung",
        "--json",
    )
    assert json.loads(ok.stdout)["segmentation"]["images_with_masks"] == len(segs) - 1
