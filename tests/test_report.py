"""The site evaluation report: every file is written, valid and consistent with the metrics."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest

from shared.metrics import evaluate_predictions
from shared.report_html import PER_CASE_NOTICE
from shared.tasks.classification.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["normal", "nodule"]


def _binary_case(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1))))
    return y, np.stack([1 - score, score], axis=1)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_binary_report_writes_valid_files(tmp_path):
    y, proba = _binary_case()
    m = evaluate_predictions(y, proba, CLASSES, threshold=0.4, n_bootstrap=200)
    ids = [f"1.2.840.99.{i}" for i in range(len(y))]
    info = {"architecture": "smallcnn", "classes": CLASSES, "provenance": "federated, round 3", "sha256": "f" * 64}
    out = write_report(tmp_path / "eval", m, y, proba, CLASSES, case_ids=ids, model_info=info)

    names = {"metrics.json", "roc.png", "calibration.png", "confusion.png", "predictions.csv", "report.html"}
    assert {p.name for p in out.values()} == names
    assert all(p.parent == tmp_path / "eval" and p.is_file() for p in out.values())
    for key in ("roc", "calibration", "confusion"):
        data = out[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000  # a real plot, not an empty canvas

    assert json.loads(out["metrics"].read_text()) == m

    rows = _read_csv(out["predictions"])
    assert len(rows) == len(y)
    assert list(rows[0]) == ["case_id", "true_label", "p_normal", "p_nodule", "predicted_label"]
    assert [r["case_id"] for r in rows] == ids
    assert [r["true_label"] for r in rows] == [CLASSES[t] for t in y]
    called = [r["predicted_label"] == "nodule" for r in rows]
    assert called == [bool(p >= 0.4) for p in proba[:, 1]]  # the operating threshold, not 0.5
    assert float(rows[5]["p_nodule"]) == pytest.approx(proba[5, 1], abs=1e-6)

    page = out["report"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in images)
    assert "<img" in page and 'src="roc.png"' not in page  # self-contained: nothing loaded from disk
    assert PER_CASE_NOTICE in page
    assert f"{m['auc']:.3f}" in page
    assert f"{m['auc_ci95'][0]:.3f}–{m['auc_ci95'][1]:.3f}" in page
    assert f"{m['sensitivity']:.3f}" in page and f"{m['specificity']:.3f}" in page
    assert "f" * 64 in page and "smallcnn" in page and "federated, round 3" in page
    assert '<th>normal</th><td class="num">60</td>' in page  # n per class


def test_multiclass_report(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["normal", "nodule", "mass"]
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3))
    logits[np.arange(150), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = evaluate_predictions(y, proba, classes, n_bootstrap=100)
    out = write_report(tmp_path, m, y, proba, classes)
    rows = _read_csv(out["predictions"])
    assert len(rows) == 150 and rows[0]["case_id"] == "case-00001"
    assert [r["predicted_label"] for r in rows] == [classes[k] for k in proba.argmax(axis=1)]
    page = out["report"].read_text(encoding="utf-8")
    assert "AUC mass vs rest" in page and f"{m['auc']:.3f}" in page
    assert out["roc"].read_bytes()[:8] == PNG_MAGIC


def test_single_class_report_shows_warning_instead_of_failing(tmp_path):
    y, proba = _binary_case(20)
    y = np.zeros_like(y)
    m = evaluate_predictions(y, proba, CLASSES, n_bootstrap=50)
    out = write_report(tmp_path, m, y, proba, CLASSES)
    page = out["report"].read_text(encoding="utf-8")
    assert "only one class is present" in page
    assert "n/a" in page  # AUC shown as not available
    assert out["roc"].read_bytes()[:8] == PNG_MAGIC


def test_html_escapes_user_text(tmp_path):
    y, proba = _binary_case(30)
    m = evaluate_predictions(y, proba, CLASSES, n_bootstrap=0)
    out = write_report(tmp_path, m, y, proba, CLASSES, title="<script>x</script>", model_info={"note": "a<b"})
    page = out["report"].read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&lt;b" in page


def test_mismatched_case_ids_is_a_clear_error(tmp_path):
    y, proba = _binary_case(10)
    m = evaluate_predictions(y, proba, CLASSES, n_bootstrap=0)
    with pytest.raises(ValueError, match="3 case ids for 10 cases"):
        write_report(tmp_path, m, y, proba, CLASSES, case_ids=["a", "b", "c"])
