"""Evaluation metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shared.metrics import (
    calibration_bins,
    evaluate_predictions,
    expected_calibration_error,
    roc_points,
    youden_threshold,
)

CLASSES = ["normal", "nodule"]


def _binary_proba(score) -> np.ndarray:
    score = np.asarray(score, dtype=float)
    return np.stack([1 - score, score], axis=1)


def _synthetic(n: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels with a logistic score that separates them partially."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * y - 1))))
    return y, score


def test_perfect_classifier_auc_one_with_degenerate_ci():
    y = np.array([0, 0, 0, 1, 1, 1])
    m = evaluate_predictions(y, _binary_proba([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), CLASSES, n_bootstrap=200)
    assert m["auc"] == 1.0
    assert m["auc_ci95"] == [1.0, 1.0]
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert m["youden"]["j"] == 1.0
    # The Youden cut lies between the highest negative and the lowest positive score.
    assert 0.3 < m["youden"]["threshold"] <= 0.7
    assert m["warnings"] == []


def test_reversed_classifier_auc_zero():
    y = np.array([0, 0, 0, 1, 1, 1])
    m = evaluate_predictions(y, _binary_proba([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), CLASSES, n_bootstrap=100)
    assert m["auc"] == 0.0
    assert m["auc_ci95"] == [0.0, 0.0]


def test_known_confusion_and_operating_point():
    # true:  0    0    0    0    1    1    1
    # score: .1   .4   .6   .8   .3   .7   .9   -> at 0.5: TN=2 FP=2 FN=1 TP=2
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.4, 0.6, 0.8, 0.3, 0.7, 0.9])
    m = evaluate_predictions(y, _binary_proba(score), CLASSES, n_bootstrap=0)
    assert m["confusion"] == [[2, 2], [1, 2]]
    assert m["threshold"] == 0.5
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 4) / 2)
    # 12 positive/negative pairs, positive ranked higher in 8 of them.
    assert m["auc"] == pytest.approx(8 / 12)
    assert m["auc_ci95"] is None
    assert m["n"] == 7 and m["n_per_class"] == {"normal": 4, "nodule": 3}
    assert m["positive_class"] == "nodule" and m["classes"] == CLASSES
    # An explicit operating threshold moves the confusion matrix: at 0.75 only .8 and .9 are called positive.
    m2 = evaluate_predictions(y, _binary_proba(score), CLASSES, threshold=0.75, n_bootstrap=0)
    assert m2["confusion"] == [[3, 1], [2, 1]]
    assert m2["threshold"] == 0.75


def test_threshold_is_inclusive():
    y = np.array([0, 1])
    m = evaluate_predictions(y, _binary_proba([0.2, 0.5]), CLASSES, n_bootstrap=0)
    assert m["confusion"] == [[1, 0], [0, 1]]


def test_youden_threshold_maximises_j():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.4, 0.6, 0.8, 0.3, 0.7, 0.9])
    t = youden_threshold(y, score)
    # Best J = 2/3 - 1/4 at cut >= 0.7 (TP .7,.9; FP .8); midway to next lower score 0.6.
    assert t == pytest.approx(0.65)
    pred = score >= t
    sens, spec = pred[y == 1].mean(), 1 - pred[y == 0].mean()
    best = max((score[y == 1] >= c).mean() + (score[y == 0] < c).mean() - 1 for c in np.r_[score, np.inf])
    assert sens + spec - 1 == pytest.approx(best)


def test_youden_threshold_single_class_uses_default_or_raises():
    assert youden_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold(np.zeros(5), np.linspace(0, 1, 5), default=None)


def test_ece_calibrated_near_zero_and_overconfident_large():
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=20000)
    y = (rng.uniform(size=prob.size) < prob).astype(int)  # outcome drawn with exactly the stated probability
    assert expected_calibration_error(y, prob) < 0.02
    # Overconfident: says 0.95 / 0.05 but is right only 60% of the time.
    y2 = rng.integers(0, 2, 20000)
    right = rng.uniform(size=y2.size) < 0.6
    called = np.where(right, y2, 1 - y2)
    prob2 = np.where(called == 1, 0.95, 0.05)
    ece = expected_calibration_error(y2, prob2)
    assert ece == pytest.approx(0.35, abs=0.02)
    m = evaluate_predictions(y2, _binary_proba(prob2), CLASSES, n_bootstrap=0)
    assert m["ece"] == pytest.approx(ece)


def test_calibration_bins_shape_and_content():
    prob = np.array([0.05, 0.05, 0.15, 1.0, 0.95])
    y = np.array([0, 1, 0, 1, 1])
    bins = calibration_bins(y, prob, n_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 lands in the last bin
    assert bins[0]["frac_pos"] == 0.5 and bins[0]["mean_pred"] == pytest.approx(0.05)
    assert bins[2]["mean_pred"] is None and bins[2]["frac_pos"] is None
    assert bins[9]["bin_lo"] == 0.9 and bins[9]["bin_hi"] == 1.0


def test_single_class_gives_none_auc_with_warning_not_exception():
    y = np.zeros(6, dtype=int)
    m = evaluate_predictions(y, _binary_proba(np.linspace(0.1, 0.9, 6)), CLASSES)
    assert m["auc"] is None and m["auc_ci95"] is None and m["youden"] is None
    assert m["sensitivity"] is None and m["specificity"] == pytest.approx(3 / 6)
    assert any("one class" in w for w in m["warnings"])
    assert any("'nodule'" in w for w in m["warnings"])
    json.dumps(m)  # still a valid report payload

    y3 = np.full(5, 2)
    p3 = np.random.default_rng(0).dirichlet([1, 1, 1], size=5)
    m3 = evaluate_predictions(y3, p3, ["a", "b", "c"])
    assert m3["auc"] is None and all(v is None for v in m3["per_class_auc"].values())
    assert any("one class" in w for w in m3["warnings"])


def test_multiclass_macro_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    n, classes = 600, ["a", "b", "c", "d"]
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = evaluate_predictions(y, proba, classes, n_bootstrap=300)
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    for k, c in enumerate(classes):
        assert m["per_class_auc"][c] == pytest.approx(roc_auc_score(y == k, proba[:, k]))
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi
    assert m["accuracy"] == pytest.approx((proba.argmax(1) == y).mean())
    assert np.array(m["confusion"]).sum() == n and np.trace(m["confusion"]) == (proba.argmax(1) == y).sum()
    assert "threshold" not in m and "youden" not in m
    json.dumps(m)


def test_multiclass_with_absent_class_averages_present_ones():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)  # class "c" never occurs
    proba = rng.dirichlet([1, 1, 1], size=200)
    m = evaluate_predictions(y, proba, ["a", "b", "c"], n_bootstrap=50)
    assert m["per_class_auc"]["c"] is None
    assert m["auc"] == pytest.approx((m["per_class_auc"]["a"] + m["per_class_auc"]["b"]) / 2)
    assert any("'c'" in w for w in m["warnings"])


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 2000):
        y, score = _synthetic(n, seed=n)
        m = evaluate_predictions(y, _binary_proba(score), CLASSES, n_bootstrap=500, seed=1)
        lo, hi = m["auc_ci95"]
        assert lo <= m["auc"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # width ~ 1/sqrt(n): 20x the cases, about 4.5x narrower


def test_bootstrap_replicates_are_exact_aucs():
    """The vectorised replicate AUC equals sklearn's AUC on the same resampled cases, ties included."""
    from shared.metrics import _bootstrap_auc, _stratified_draws

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.uniform(size=300) * 0.5 + 0.3 * y, 1)  # coarse scores, many ties
    neg, pos = _stratified_draws(y, 2, 4, rng)
    reps = _bootstrap_auc(score, pos, neg, np.flatnonzero(y == 0))
    for b in range(4):
        idx = np.r_[neg[b], pos[b]]
        assert reps[b] == pytest.approx(roc_auc_score(y[idx], score[idx]), abs=1e-12)


def test_bootstrap_is_seeded_and_fast():
    y, score = _synthetic(5000, seed=7)
    proba = _binary_proba(score)
    evaluate_predictions(y[:50], proba[:50], CLASSES, n_bootstrap=10)  # warm-up
    t0 = time.perf_counter()
    m1 = evaluate_predictions(y, proba, CLASSES, n_bootstrap=1000, seed=3)
    elapsed = time.perf_counter() - t0
    m2 = evaluate_predictions(y, proba, CLASSES, n_bootstrap=1000, seed=3)
    assert m1["auc_ci95"] == m2["auc_ci95"]
    assert elapsed < 2.0, f"1000 bootstrap replicates on 5000 cases took {elapsed:.2f} s"


def test_roc_points_match_endpoints():
    y = np.array([0, 0, 1, 1])
    fpr, tpr, thr = roc_points(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.isinf(thr[0])


def test_values_are_plain_python_types():
    y, score = _synthetic(60, seed=2)
    m = evaluate_predictions(y, _binary_proba(score), CLASSES, n_bootstrap=50)

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or type(v) in (int, float, str, bool), (v, type(v))

    walk(m)


@pytest.mark.parametrize(
    "y, proba, match",
    [
        (np.array([0, 1]), np.zeros((2, 3)), r"shape \(N, 2\)"),
        (np.array([0, 1, 1]), np.full((2, 2), 0.5), "3 cases but proba has 2"),
        (np.array([0, 2]), np.full((2, 2), 0.5), "outside 0..1"),
        (np.array([], dtype=int), np.zeros((0, 2)), "no cases"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, proba, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(y, proba, CLASSES)
