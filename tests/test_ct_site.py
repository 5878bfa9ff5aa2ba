"""A CT site before and around a 3D segmentation run: readiness check, `fedrad-site check`, stats, model card, config.

Two synthetic CT sites (site-1: classic CT with DICOM SEG, site-2: Enhanced CT with RTSTRUCT; junk series in both),
8 mm voxels so every volume is tiny. What is checked here is what the federation test
(tests/integration/test_ct_federation.py) relies on without exercising each rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from shared.config import ConfigError, SiteDataConfig

LABELS = ["liver", "lesion"]


@pytest.fixture(scope="module")
def ct_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """site name → a label-free site.yaml (data, image_size 16, its own cache) over a 3-patient CT export."""
    from shared.synth.ct_cohort import write_ct_cohort

    root = tmp_path_factory.mktemp("ct")
    out = {}
    for s in write_ct_cohort(root / "cohort", n_sites=2, seed=4, unseen=0, patients_per_site=3, size=32):
        path = root / s.name / "site.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump({"data": str(s.path / "dicom"), "image_size": 16, "cache_dir": "cache"}))
        out[s.name] = path
    return out


def _cfg(site_yaml: Path) -> SiteDataConfig:
    from client.site_options import site_data_config

    return site_data_config(config=site_yaml, task="segmentation3d")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True, text=True, timeout=120, env=env)


def test_readiness_of_a_ct_export_counts_series_and_label_objects_from_headers(
    ct_sites: dict[str, Path], tmp_path: Path
) -> None:
    """What `fedrad-site start` checks at a site without a label CSV: CT series and SEG/RTSTRUCT, not 2D images."""
    from shared.site_data import check_label_free_site
    from shared.tasks.segmentation3d.check import volume_readiness

    for name, site_yaml in ct_sites.items():
        ok, verdict = check_label_free_site(_cfg(site_yaml))
        assert ok and verdict.startswith("ready for 3D segmentation: 3 usable series (3 CT)"), (name, verdict)
        assert "3 label object(s)" in verdict and "series-missing-slices" in verdict
        assert not list((site_yaml.parent / "cache").glob("volumes/*.npy"))  # headers only: nothing assembled
    data = _cfg(ct_sites["site-1"]).data
    one_patient = SiteDataConfig(data=data / sorted(os.listdir(data))[0], cache_dir=tmp_path / "cache")
    ok, verdict = volume_readiness(one_patient)
    assert not ok and "1 usable series" in verdict and "--volumes --segments" in verdict


def test_readiness_of_a_radiograph_export_is_still_the_2d_check(tmp_path: Path) -> None:
    from shared.site_data import check_label_free_site
    from shared.synth import write_cohort
    from shared.tasks.segmentation3d.check import volume_readiness

    site = write_cohort(tmp_path / "xr", n_sites=1, unseen=0, scale=0.05, seed=4, task="segmentation")[0]
    cfg = SiteDataConfig(data=site.dicom_dir, image_size=32, cache_dir=tmp_path / "cache")
    assert volume_readiness(cfg) is None
    ok, verdict = check_label_free_site(cfg)
    assert ok and verdict.startswith("ready for segmentation:")


def test_site_check_cli_on_a_ct_site(ct_sites: dict[str, Path]) -> None:
    """`check --config` (the start check), `check --volumes --segments` (series, labels on their grids), refusals."""
    site_yaml = ct_sites["site-2"]
    plain = run("check", "--config", str(site_yaml), "--json")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert json.loads(plain.stdout)["verdict"].startswith("ready for 3D segmentation")

    full = run("check", "--config", str(site_yaml), "--volumes", "--segments", ",".join(LABELS), "--spacing", "8")
    assert full.returncode == 0, full.stderr[-2000:]
    assert "Volume check" in full.stdout and "3 of 3 usable series have a label map" in full.stdout
    report = json.loads(
        run("check", "--config", str(site_yaml), "--volumes", "--segments", "liver", "--spacing", "8", "--json").stdout
    )
    assert report["ok"] and report["series"] == {"found": 5, "usable": 3, "rejected": 2}
    assert report["spacing_mm"] == [8.0, 8.0, 8.0] and report["labels"]["series_with_labels"] == 3
    assert all(s["model_shape"][1] < 60 for s in report["series_list"] if s["usable"])  # at 8 mm: tiny

    missing = run("check", "--config", str(site_yaml), "--volumes", "--segments", "spleen", "--spacing", "8")
    assert missing.returncode == 1 and "0 of 3 usable series" in missing.stdout
    for bad, says in ((["--spacing", "8"], "add --volumes"), (["--volumes", "--window", "liver"], "--window")):
        proc = run("check", "--config", str(site_yaml), *bad)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_data_statistics_of_a_ct_site(ct_sites: dict[str, Path]) -> None:
    """`fedrad-server stats` at a CT site: volumes, volumes per segment, each volume's mean intensity (no per-case
    value), through the outbound guard's stats rules."""
    from client.federated import SiteSession
    from client.outbound_guard import guard_reply
    from server.consortium import parse_consortium

    torch.set_num_threads(1)
    consortium = {
        "name": "CT",
        "address": "127.0.0.1:9443",
        "task": {"type": "segmentation3d", "labels": LABELS, "image_size": 16, "spacing": 8},
    }
    rc = parse_consortium(consortium).to_run_config(run_dir="/tmp/ct-stats", mode="stats")
    session = SiteSession.open(rc, {"site-config": str(ct_sites["site-1"]), "site-name": "site-1"})
    _, counts = session.handle("query", {}, {})
    assert counts["images"] == 3 and counts["class:liver"] == 3
    assert sum(counts[f"intensity-bin:{i}"] for i in range(10)) == 3
    guarded = guard_reply("query", incoming={}, arrays=None, metrics=counts, min_count=1)
    assert not guarded.violations and guarded.metrics["images"] == 3


def test_model_card_of_a_3d_model_names_its_patch_spacing_and_window(tmp_path: Path) -> None:
    from server.checkpoints import RunDir, RunTask
    from server.model_card import model_card
    from shared.modelfile import load_model_file
    from shared.tasks import TaskSpec, get_task

    options = get_task("segmentation3d").check_options({"spacing": "8", "window": "-600/1500"})
    spec = TaskSpec("segmentation3d", tuple(LABELS), "unet", 16, options)
    run_dir = RunDir(tmp_path / "run")
    task = RunTask(spec, "CT", "fedavg", 0)
    run_dir.prepare(task, resume=False)
    row = {"eval": {"num-examples": 2, "dice-mean": 0.4, "dice-liver": 0.7, "dice-lesion": 0.1, "hd95-mm-liver": 9.5}}
    run_dir.save_round(1, spec.build_model().state_dict(), task=task, num_server_rounds=1, metrics=row, eval_auc=0.4)
    card = model_card(load_model_file(tmp_path / "run" / "latest.pt"), tmp_path / "run", {}, ["a", "b"])
    assert "input 1×16×16×16" in card and "8×8×8 mm voxels" in card and "CT window -600/1500" in card
    assert "liver Dice 0.700 HD95 9.5 mm" in card and "(2 cases)" in card
    assert "threshold" not in card and "pad to square" not in card


def test_a_patch_side_the_network_cannot_halve_is_refused_in_consortium_yaml_and_run_config() -> None:
    from server.consortium import parse_consortium
    from shared.tasks import TaskSpec

    base = {"name": "CT", "address": "127.0.0.1:9443"}
    task = {"type": "segmentation3d", "labels": LABELS, "image_size": 20}
    with pytest.raises(ConfigError, match=r"task.image_size'.*multiple of 8.*got 20"):
        parse_consortium({**base, "task": task})
    ok = parse_consortium({**base, "task": {**task, "image_size": 24, "foreground": 1.0, "patches_per_case": 8.0}})
    rc = ok.to_run_config(run_dir="/tmp/r")
    assert rc["task-options"] == "foreground=1,patches_per_case=8,spacing=1.5x1.5x1.5,window=soft_tissue"
    assert TaskSpec.from_run_config(rc).options == ok.task.spec().options
    with pytest.raises(ValueError, match="'image-size'.*multiple of 8"):
        TaskSpec.from_run_config({**rc, "image-size": 12})
