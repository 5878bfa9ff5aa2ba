"""Multi-label figures: per finding AUC with its bootstrap interval, sensitivity/specificity at the finding's
threshold, prevalence; macro and micro AUC. Built on :mod:`shared.metrics` (the binary figures of one finding
are exactly classification's, with the finding as the positive class).

Only certain labels count (1 or 0): an uncertain label is not ground truth, whatever the consortium trains it
as, and a blank one is unknown. So every finding has its own number of cases (``n_positive`` + ``n_negative``).

* macro AUC: the mean of the findings' AUCs (those defined here: both classes present); its interval averages
  the findings' bootstrap replicates, as :func:`shared.metrics.evaluate_predictions` does for a multi-class
  macro AUC (each finding resampled within its classes);
* micro AUC: one AUC over every certain (case, finding) pair, so frequent findings weigh more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shared.metrics import DEFAULT_THRESHOLD, auc_replicates, evaluate_predictions, percentile_ci, youden_threshold
from shared.tasks.multilabel.dataset import MultilabelDataset, masked_bce, predict_proba
from shared.training import batched_logits


def _thresholds(threshold: float | Sequence[float] | None, n: int) -> list[float]:
    if threshold is None:
        return [DEFAULT_THRESHOLD] * n
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * n
    if len(threshold) != n:
        raise ValueError(f"got {len(threshold)} thresholds for {n} findings")
    return [float(t) for t in threshold]


def evaluate_findings(
    values: np.ndarray,
    proba: np.ndarray,
    findings: list[str],
    threshold: float | Sequence[float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Every figure of one set of multi-label predictions, JSON-serialisable.

    ``values`` (N, F) holds the labels as written (1, 0, -1, NaN), ``proba`` (N, F) the predicted probabilities.
    A figure that is undefined here (an AUC without positives) is None with a sentence in ``warnings``.
    """
    v = np.asarray(values, dtype=float)
    p = np.asarray(proba, dtype=float)
    if v.shape != p.shape or v.ndim != 2 or v.shape[1] != len(findings):
        raise ValueError(f"values {v.shape} and proba {p.shape} must both be (N, {len(findings)})")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or infinite values")
    rng = np.random.default_rng(seed)
    mask = (v == 1) | (v == 0)
    out: dict = {"task": "multilabel", "findings": list(findings), "n": int(v.shape[0]), "n_bootstrap": n_bootstrap}
    warnings: list[str] = []
    per: dict[str, dict] = {}
    reps = []
    for i, (finding, thr) in enumerate(zip(findings, _thresholds(threshold, len(findings)), strict=True)):
        y, s = v[mask[:, i], i].astype(np.int64), p[mask[:, i], i]
        fig: dict = {
            "n_positive": int((y == 1).sum()),
            "n_negative": int((y == 0).sum()),
            "n_uncertain": int((v[:, i] == -1).sum()),
            "n_unknown": int(np.isnan(v[:, i]).sum()),
            "prevalence": float(y.mean()) if y.size else None,
            "threshold": thr,
            "auc": None,
            "auc_ci95": None,
            "sensitivity": None,
            "specificity": None,
            "youden": None,
            "ece": None,
        }
        if y.size:
            m = evaluate_predictions(y, np.stack([1 - s, s], axis=1), ["absent", finding], threshold=thr, n_bootstrap=0)
            fig.update({k: m[k] for k in ("auc", "sensitivity", "specificity", "youden", "ece")})
        if fig["auc"] is None:
            warnings.append(
                f"{finding}: {fig['n_positive']} positive and {fig['n_negative']} negative certain "
                "labels, so its AUC is undefined here"
            )
        elif n_bootstrap > 0:
            r = auc_replicates(y, s, n_bootstrap, rng)
            fig["auc_ci95"] = percentile_ci(r)
            reps.append(r)
        per[finding] = fig
    out["per_finding"] = per
    aucs = [f["auc"] for f in per.values() if f["auc"] is not None]
    out["auc_macro"] = float(np.mean(aucs)) if aucs else None
    out["auc_macro_ci95"] = percentile_ci(np.mean(reps, axis=0)) if reps else None
    out["auc_macro_findings"] = len(aucs)
    if aucs and len(aucs) < len(findings):
        warnings.append(f"macro AUC averages the {len(aucs)} of {len(findings)} findings whose AUC is defined here")
    y_all, s_all = v[mask].astype(np.int64), p[mask]
    both = bool((y_all == 1).any() and (y_all == 0).any())
    out["auc_micro"] = float(_auc(y_all, s_all)) if both else None
    out["auc_micro_ci95"] = (
        percentile_ci(auc_replicates(y_all, s_all, n_bootstrap, rng)) if both and n_bootstrap else None
    )
    out["n_certain_labels"] = int(mask.sum())
    out["warnings"] = warnings
    return out


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def certain_loss(model: nn.Module, data: MultilabelDataset, batch_size: int = 256) -> float:
    """Unweighted BCE over the certain labels: the same figure whatever the uncertainty policy (NaN: none)."""
    if len(data) == 0:
        return math.nan
    logits = batched_logits(model, data.images, batch_size).float()
    labels, mask = data.certain()
    if not mask.any():
        return math.nan
    return float(masked_bce(logits, torch.from_numpy(labels).float(), torch.from_numpy(mask)))


def figures(
    model: nn.Module,
    data: MultilabelDataset,
    *,
    threshold: float | Sequence[float] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """:func:`evaluate_findings` of ``model`` on ``data`` (no cases: every figure None)."""
    proba = predict_proba(model, data.images) if len(data) else np.zeros((0, len(data.findings)), dtype=np.float32)
    return evaluate_findings(data.values.numpy(), proba, data.findings, threshold, n_bootstrap, seed)


def site_metrics(model: nn.Module, data: MultilabelDataset, seed: int, n_bootstrap: int) -> dict[str, float | int]:
    """The aggregate figures a site sends (keys of :mod:`shared.tasks.multilabel.metric_keys`), at threshold 0.5.

    A finding whose AUC is undefined here sends nothing; the guard withholds the rest below ``min_count``."""
    m = figures(model, data, n_bootstrap=n_bootstrap, seed=seed)
    out: dict[str, float | int] = {"num-examples": len(data)}
    loss = certain_loss(model, data)
    if math.isfinite(loss):
        out["loss"] = loss
    smallest = []
    for f, fig in m["per_finding"].items():
        if fig["auc"] is None:
            continue
        count = min(fig["n_positive"], fig["n_negative"])
        smallest.append(count)
        out[f"auc-{f}-examples"] = count
        out[f"auc-{f}"] = fig["auc"]
        if fig["auc_ci95"] is not None:
            out[f"auc-{f}-ci-low"], out[f"auc-{f}-ci-high"] = fig["auc_ci95"]
        out[f"prevalence-{f}"] = fig["prevalence"]
        for what in ("sensitivity", "specificity"):
            out[f"{what}-{f}"] = fig[what]
    if m["auc_macro"] is not None:
        out["auc-macro"], out["auc-macro-examples"] = m["auc_macro"], min(smallest)
        if m["auc_macro_ci95"] is not None:
            out["auc-macro-ci-low"], out["auc-macro-ci-high"] = m["auc_macro_ci95"]
    if m["auc_micro"] is not None:
        labels, mask = data.certain()
        pos = int(labels[mask].sum())
        out["auc-micro"], out["auc-micro-examples"] = m["auc_micro"], min(pos, int(mask.sum()) - pos)
    return out


def operating_thresholds(model: nn.Module, val: MultilabelDataset) -> list[float] | None:
    """Youden's J per finding on the validation cases' certain labels (0.5 where a finding lacks a class)."""
    if len(val) == 0:
        return None
    proba = predict_proba(model, val.images)
    labels, mask = val.certain()
    return [youden_threshold(labels[mask[:, i], i], proba[mask[:, i], i]) for i in range(len(val.findings))]


def local_scores(
    model: nn.Module,
    data: MultilabelDataset,
    *,
    threshold,
    n_bootstrap: int,
    seed: int,  # noqa: ANN001
) -> dict:
    """Macro and micro AUC, then per finding AUC (95 % CI), sensitivity and specificity: ``finetune``'s table."""
    m = figures(model, data, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed)
    out: dict = {"auc-macro": m["auc_macro"], "auc-macro_ci95": m["auc_macro_ci95"], "auc-micro": m["auc_micro"]}
    for f, fig in m["per_finding"].items():
        out[f"auc-{f}"], out[f"auc-{f}_ci95"] = fig["auc"], fig["auc_ci95"]
        out[f"sensitivity-{f}"], out[f"specificity-{f}"] = fig["sensitivity"], fig["specificity"]
    return out


def score(model: nn.Module, data: MultilabelDataset) -> dict[str, float]:
    """The benchmark's figures: macro AUC and the AUC per finding (NaN where undefined), no intervals."""
    m = figures(model, data)
    nan = float("nan")
    return {
        "auc-macro": nan if m["auc_macro"] is None else m["auc_macro"],
        **{f"auc-{f}": nan if fig["auc"] is None else fig["auc"] for f, fig in m["per_finding"].items()},
    }
