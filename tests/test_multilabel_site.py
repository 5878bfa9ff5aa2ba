"""A multi-label site end to end, on real synthetic DICOM at 32 px: synth, check, train-local, evaluate (with
Grad-CAM per finding), finetune, the federated site step and export with its model card.

One small site (40 images) is written once for the module; every step goes through the task seam the way
the CLI does (``fedrad-site check`` and a bad label file also as real ``fedrad-site`` processes).
"""

from __future__ import annotations

import csv
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from client.evaluate import run_evaluate
from client.federated import SiteSession, evaluate_round, train_round
from client.finetune import FinetuneOptions, run_finetune
from client.outbound_guard import guard_reply
from client.site_options import site_data_config
from client.train_local import TrainLocalOptions, run_train_local
from server.consortium import parse_consortium
from shared.modelfile import load_model_file
from shared.synth import cohort_profiles, write_site
from shared.synth.findings import FINDINGS, SITE_FINDINGS
from shared.tasks import TaskSpec
from shared.tasks.multilabel.metric_keys import metric_keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 40
SPEC = TaskSpec("multilabel", FINDINGS, "smallcnn", 32, (("uncertain", "ones"),))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site.yaml of one synthetic multi-label site (site-1's profile), 32 px."""
    root = tmp_path_factory.mktemp("ml-site")
    summary = write_site(root / "site-1", cohort_profiles(1, 0, seed=4)[0], N_IMAGES, seed=4, task="multilabel")
    doc = {
        "data": str(summary.dicom_dir),
        "labels": str(summary.labels_csv),
        "findings": list(FINDINGS),
        "image_size": 32,
        "cache_dir": str(root / "cache"),
    }
    (root / "site.yaml").write_text(yaml.safe_dump(doc))
    return root / "site.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_synth_writes_chexpert_style_labels_with_site_prevalences(site: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(yaml.safe_load(site.read_text())["labels"], encoding="utf-8")))
    assert len(rows) == N_IMAGES and "label" not in rows[0] and set(FINDINGS) <= set(rows[0])
    cells = [r[f] for r in rows for f in FINDINGS]
    assert set(cells) == {"1", "0", "-1", ""}  # positives, negatives, uncertain and unknown entries
    assert {f: sum(r[f] == "1" for r in rows) > 0 for f in FINDINGS} == dict.fromkeys(FINDINGS, True)
    # prevalence differs by site: an outpatient clinic (site-2) sees fewer effusions than site-1's ICU
    assert SITE_FINDINGS["site-1"][0] != SITE_FINDINGS["site-2"][0]
    other = write_site(tmp_path / "site-2", cohort_profiles(2, 0, seed=4)[1], 60, seed=4, task="multilabel")
    assert other.class_counts["effusion"] / other.n_images < SITE_FINDINGS["site-1"][0][0]


def test_check_counts_every_finding_and_a_bad_cell_is_a_clear_error(site: Path, tmp_path: Path) -> None:
    proc = _cli("check", "--config", str(site), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["labels"]["matched"] == N_IMAGES
    counts = report["findings"]
    assert set(counts) == set(FINDINGS) and sum(counts["nodule"].values()) == N_IMAGES
    bad_labels = tmp_path / "bad.csv"
    text = Path(yaml.safe_load(site.read_text())["labels"]).read_text().splitlines()
    bad_labels.write_text("\n".join([text[0], text[1].rsplit(",", 1)[0] + ",maybe", *text[2:]]) + "\n")
    proc = _cli("check", "--config", str(site), "--labels", str(bad_labels))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line 2, column 'consolidation': 'maybe'" in " ".join(proc.stderr.split())
    # `fedrad-site start`'s preflight reads the finding columns too (no 'label' column in this CSV)
    from client.site_config import SiteFileConfig
    from client.site_start import check_data

    creds = {"site_name": "st-ml", "server_address": "h:1", "ca_cert": "ca.crt", "private_key": "site.key"}
    ok, verdict = check_data(SiteFileConfig(**yaml.safe_load(site.read_text()), **creds))
    assert ok and verdict.startswith(f"ready to train: {N_IMAGES} labelled images, 4 of 4 findings")


def test_train_local_then_evaluate_with_grad_cam_per_finding(site: Path, tmp_path: Path) -> None:
    cfg = site_data_config(config=site, task="multilabel")
    opts = TrainLocalOptions(model="smallcnn", epochs=2, batch_size=8, seed=1, site_name="st-ml")
    summary = run_train_local(cfg, opts, tmp_path / "local.pt", show_progress=False, task=SPEC)
    assert summary["findings"] == list(FINDINGS) and len(summary["threshold"]) == len(FINDINGS)
    assert summary["final"]["loss"] > 0 and "val_auc" in summary["final"]
    loaded = load_model_file(tmp_path / "local.pt")
    assert loaded.task_options == {"uncertain": "ones"} and loaded.threshold == summary["threshold"]

    out = tmp_path / "report"
    m = run_evaluate(tmp_path / "local.pt", out, config=site, n_bootstrap=100, show_progress=False, explain=1)
    assert m["n"] == N_IMAGES and set(m["per_finding"]) == set(FINDINGS)
    for f in FINDINGS:
        fig = m["per_finding"][f]
        assert fig["threshold"] == pytest.approx(loaded.threshold[FINDINGS.index(f)])
        assert fig["n_positive"] + fig["n_negative"] + fig["n_uncertain"] + fig["n_unknown"] == N_IMAGES
        assert fig["auc"] is None or 0.0 <= fig["auc"] <= 1.0
    assert m["auc_macro"] is not None and m["model"]["trained_with"] == {"uncertain": "ones"}
    files = {p.name for p in out.iterdir()}
    assert {"report.html", "metrics.json", "predictions.csv", "roc-per-finding.png", "explain-gradcam.png"} <= files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())  # per-case results: owner only
    assert json.loads((out / "metrics.json").read_text())["auc_macro"] == m["auc_macro"]
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,label_effusion,p_effusion,called_effusion")
    assert "Grad-CAM per finding" in (out / "report.html").read_text()

    tuned = run_finetune(
        tmp_path / "local.pt",
        tmp_path / "tuned.pt",
        FinetuneOptions(epochs=1, batch_size=8, n_bootstrap=50),
        config=site,
        show_progress=False,
    )
    assert tuned["headline"] == "auc-macro" and {"auc-macro", "auc-effusion_ci95"} <= set(tuned["before"])
    assert load_model_file(tmp_path / "tuned.pt").task_options == {"uncertain": "ones"}


def test_the_federated_site_step_trains_and_sends_per_finding_aggregates(site: Path, tmp_path: Path) -> None:
    consortium = {
        "name": "ML",
        "address": "127.0.0.1:9443",
        "rounds": 1,
        "task": {"type": "multilabel", "findings": list(FINDINGS), "uncertain": "zeros", "image_size": 32},
    }
    run_config = parse_consortium(consortium).to_run_config(run_dir=tmp_path / "run")
    session = SiteSession.open(run_config, {"site-config": str(site), "site-name": "st-ml"})
    assert session.data.train.uncertain == "zeros" and len(session.data.held_out) >= 4
    torch.manual_seed(0)
    state = session.task.build_model().state_dict()
    new_state, train_metrics = train_round(session.task, state, session.data, {"batch-size": 8}, None)
    assert set(new_state) == set(state) and train_metrics["train-loss"] > 0 and "train-acc" not in train_metrics
    sent = evaluate_round(session.task, new_state, session.data, {"server-round": 1}, None)
    assert set(sent) <= {"num-examples", "loss", "held-out", *metric_keys(list(FINDINGS))}
    g = guard_reply("evaluate", incoming={}, arrays=None, metrics=sent, min_count=1, task=session.task)
    assert not g.violations and any(k.startswith("auc-") for k in g.metrics)


def test_export_writes_a_sigmoid_graph_and_a_card_listing_the_findings(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime

    from server.checkpoints import RunDir, RunTask
    from server.enrollment import init_consortium
    from server.export import export_model

    c = tmp_path / "consortium"
    init_consortium(c, "ML Export", "127.0.0.1:9443")
    torch.manual_seed(0)
    model = SPEC.build_model()
    run = RunDir(c / "runs" / "r1")
    task = RunTask(SPEC, "ML Export", "fedavg", 0)
    run.prepare(task, resume=False)
    evaluation = {"auc-macro": 0.81, "auc-micro": 0.84, "auc-effusion": 0.9, "num-examples": 40}
    run.save_round(1, model.state_dict(), task=task, num_server_rounds=1, metrics={"round": 1, "eval": evaluation})
    result = export_model(c, tmp_path / "ml.onnx", fmt="onnx")
    assert result["max_gap"] < 1e-5 and load_model_file(c / "runs" / "r1" / "latest.pt").task_options == {
        "uncertain": "ones"
    }
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(tmp_path / "ml.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x)).numpy()
    assert got.shape == (2, len(FINDINGS)) and np.abs(got - expected).max() < 1e-4
    card = Path(result["model_card"]).read_text()
    assert "effusion, nodule, cardiomegaly, consolidation" in card and "one probability per finding" in card
    assert "macro AUC 0.810, micro AUC 0.840; AUC per finding: effusion 0.900" in card
