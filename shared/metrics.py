"""Evaluation metrics for a site's predictions: discrimination, operating point, calibration.

Everything here is a pure function over numpy arrays and returns plain Python
numbers, so the result can go straight into ``metrics.json`` or a federated
metrics message. Point estimates come from scikit-learn; only the bootstrap is
our own, because resampling 1000 times through ``roc_auc_score`` is far too slow
for a site report. It is vectorised instead: every replicate is a row of
resampling counts, and each AUC is a weighted Mann-Whitney statistic over one
shared sort of the scores.

Conventions: ``y_true`` holds class indices into ``classes``; ``proba`` is (N, C)
class probabilities; in the binary case the positive class is ``classes[1]`` and a
case is called positive when its positive-class probability is ``>= threshold``
(the same convention as :func:`sklearn.metrics.roc_curve`).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve

DEFAULT_THRESHOLD = 0.5


def evaluate_predictions(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """All evaluation figures for one set of predictions, as a JSON-serialisable dict.

    Undefined figures (AUC with one class present, sensitivity without positives)
    are ``None`` with a sentence in ``warnings``; small or lopsided site test sets
    are normal in a federation and must not crash an evaluation round.
    """
    y, p = _check_inputs(y_true, proba, classes)
    n_classes = len(classes)
    counts = np.bincount(y, minlength=n_classes)
    out: dict = {
        "classes": list(classes),
        "n": int(y.size),
        "n_per_class": {c: int(k) for c, k in zip(classes, counts)},
        "n_bootstrap": int(n_bootstrap),
        "warnings": [],
    }
    missing = [c for c, k in zip(classes, counts) if k == 0]
    if missing:
        out["warnings"].append(
            f"no cases of class {', '.join(map(repr, missing))} in the evaluation data; "
            "figures that need every class are undefined"
        )
    rng = np.random.default_rng(seed)
    if n_classes == 2:
        out.update(_binary(y, p[:, 1], classes, threshold, n_bootstrap, rng, out["warnings"]))
    else:
        out.update(_multiclass(y, p, classes, n_bootstrap, rng, out["warnings"]))
    return out


def roc_points(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr, thresholds) for a binary target; thresholds[0] is +inf (nothing called positive)."""
    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), np.asarray(score, dtype=float))
    return fpr, tpr, thr


def calibration_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Equal-width reliability bins over [0, 1]; empty bins are kept with ``None`` means.

    ``y_true`` is 0/1 (outcome happened), ``prob`` the predicted probability of it.
    Keeping empty bins means every report has the same bin edges.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    q = np.clip(np.asarray(prob, dtype=float).ravel(), 0.0, 1.0)
    idx = np.minimum((q * n_bins).astype(int), n_bins - 1)  # last bin is closed at 1.0
    count = np.bincount(idx, minlength=n_bins)
    sum_pred = np.bincount(idx, weights=q, minlength=n_bins)
    sum_pos = np.bincount(idx, weights=y, minlength=n_bins)
    bins = []
    for b in range(n_bins):
        k = int(count[b])
        bins.append(
            {
                "bin_lo": b / n_bins,
                "bin_hi": (b + 1) / n_bins,
                "mean_pred": float(sum_pred[b] / k) if k else None,
                "frac_pos": float(sum_pos[b] / k) if k else None,
                "count": k,
            }
        )
    return bins


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """Count-weighted mean |mean predicted - observed frequency| over the equal-width bins."""
    bins = calibration_bins(y_true, prob, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    gap = sum(b["count"] * abs(b["mean_pred"] - b["frac_pos"]) for b in bins if b["count"])
    return float(gap / total)


def youden_threshold(y_true: np.ndarray, score: np.ndarray, default: float | None = DEFAULT_THRESHOLD) -> float:
    """The cut that maximises sensitivity + specificity - 1 (Youden's J) on this data.

    Returns the midpoint between the cut score and the next lower score, so the
    threshold does not sit exactly on a validation case; both give the same
    sensitivity and specificity here. If only one class is present J is undefined:
    returns ``default``, or raises ``ValueError`` when ``default`` is None.
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if len(np.unique(y)) < 2:
        if default is None:
            raise ValueError("Youden threshold needs cases of both classes; only one class is present")
        return float(default)
    _, _, thr, j, i = _youden(y, s)
    return float(_midpoint(thr, i))


# --- binary -----------------------------------------------------------------------------------


def _binary(y, score, classes, threshold, n_bootstrap, rng, warn) -> dict:
    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    both = bool((y == 0).any() and (y == 1).any())
    pred = (score >= thr).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    out = {
        "positive_class": classes[1],
        "threshold": thr,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "confusion": cm.astype(int).tolist(),
        "ece": expected_calibration_error(y, score),
        "auc": None,
        "auc_ci95": None,
        "youden": None,
    }
    if not both:
        warn.append(
            "only one class is present, so AUC, its CI, the Youden point and one of "
            "sensitivity/specificity are undefined (None)"
        )
        return out
    out["auc"] = float(roc_auc_score(y, score))
    if n_bootstrap > 0:
        neg_draw, pos_draw = _stratified_draws(y, 2, n_bootstrap, rng)
        out["auc_ci95"] = percentile_ci(_bootstrap_auc(score, pos_draw, neg_draw, np.flatnonzero(y == 0)))
    fpr, tpr, cut, j, i = _youden(y, score)
    out["youden"] = {
        "threshold": float(_midpoint(cut, i)),
        "sensitivity": float(tpr[i]),
        "specificity": float(1.0 - fpr[i]),
        "j": float(j[i]),
    }
    return out


def _youden(y, s):
    """ROC at every distinct score, and the index of the best J (excluding the +inf 'call nothing' cut)."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    i = 1 + int(np.argmax(j[1:]))
    return fpr, tpr, thr, j, i


def _midpoint(thr: np.ndarray, i: int) -> float:
    return float((thr[i] + thr[i + 1]) / 2) if i + 1 < len(thr) else float(thr[i])


# --- multi-class --------------------------------------------------------------------------------


def _multiclass(y, p, classes, n_bootstrap, rng, warn) -> dict:
    n_classes = len(classes)
    pred = p.argmax(axis=1)
    conf = p.max(axis=1)
    present = np.bincount(y, minlength=n_classes) > 0
    # Per-class one-vs-rest AUC: defined only when the class and its complement both occur.
    ok = present & (present.sum() >= 2)
    per_class = {c: (float(roc_auc_score(y == k, p[:, k])) if ok[k] else None) for k, c in enumerate(classes)}
    out = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "confusion": confusion_matrix(y, pred, labels=list(range(n_classes))).astype(int).tolist(),
        "ece": expected_calibration_error(pred == y, conf),
        "per_class_auc": per_class,
        "auc": None,
        "auc_ci95": None,
    }
    if ok.sum() == 0:
        warn.append("only one class is present, so AUC (macro and per class) is undefined (None)")
        return out
    if not ok.all():
        warn.append("macro AUC averages only the classes present in the evaluation data")
    ks = np.flatnonzero(ok)
    out["auc"] = float(np.mean([per_class[classes[k]] for k in ks]))
    if n_bootstrap > 0:
        draws = _stratified_draws(y, n_classes, n_bootstrap, rng)
        reps = [
            _bootstrap_auc(
                p[:, k],
                draws[k],
                np.concatenate([d for j, d in enumerate(draws) if j != k and d is not None], axis=1),
                np.flatnonzero(y != k),
            )
            for k in ks
        ]
        out["auc_ci95"] = percentile_ci(np.mean(reps, axis=0))
    return out


# --- vectorised stratified bootstrap ---------------------------------------------------------------


def _stratified_draws(y: np.ndarray, n_classes: int, n_bootstrap: int, rng: np.random.Generator) -> list:
    """Per class, a (B, n_k) array of case indices drawn with replacement from that class (None if absent).

    Resampling within each class keeps every replicate's class sizes, so every
    replicate has both positives and negatives and its AUC is defined.
    """
    draws = []
    for k in range(n_classes):
        members = np.flatnonzero(y == k)
        if members.size == 0:
            draws.append(None)
            continue
        draws.append(members[rng.integers(0, members.size, size=(n_bootstrap, members.size), dtype=np.int32)])
    return draws


def _bootstrap_auc(score: np.ndarray, pos_draw: np.ndarray, neg_draw: np.ndarray, negs: np.ndarray) -> np.ndarray:
    """AUC of each bootstrap replicate, (B,), given the drawn positive and negative case indices.

    ``negs`` lists every case that can be drawn as a negative (``neg_draw`` is a subset).

    Mann-Whitney: AUC = P(s_pos > s_neg) + 0.5 P(s_pos == s_neg). Sort the negatives
    once; per replicate, the cumulative count of drawn negatives below
    each rank, weighted by how many drawn positives sit at that rank, gives the
    pair count in O(N) instead of O(n_pos * n_neg). Integer arithmetic, so exact.
    """
    n_boot = pos_draw.shape[0]
    order = np.argsort(score[negs], kind="stable")
    neg_sorted = score[negs][order]
    rank = np.zeros(score.size, dtype=np.int64)
    rank[negs[order]] = np.arange(negs.size)
    grid = negs.size + 1
    rows = (np.arange(n_boot, dtype=np.int64) * grid)[:, None]
    # below[b, g]: drawn negatives with rank < g
    below = np.bincount((rows + rank[neg_draw] + 1).ravel(), minlength=n_boot * grid).reshape(n_boot, grid)
    np.cumsum(below, axis=1, out=below)
    # A positive at score s beats the negatives of rank < lt(s) and ties those in [lt(s), le(s)).
    lt = np.searchsorted(neg_sorted, score, side="left")
    le = np.searchsorted(neg_sorted, score, side="right")
    hits = np.bincount(
        np.concatenate([(rows + lt[pos_draw]).ravel(), (rows + le[pos_draw]).ravel()]), minlength=n_boot * grid
    ).reshape(n_boot, grid)
    twice_pairs = np.einsum("bg,bg->b", below, hits)
    return twice_pairs / (2.0 * pos_draw.shape[1] * neg_draw.shape[1])


def auc_replicates(y_true: np.ndarray, score: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """ROC AUC of ``n_bootstrap`` stratified bootstrap replicates, (B,), of a 0/1 target with both classes present.

    The same resampling as :func:`evaluate_predictions` (within each class), exposed so figures built from several
    AUCs (a multi-label macro AUC) can average the replicates before taking the interval."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(score, dtype=float).ravel()
    neg_draw, pos_draw = _stratified_draws(y, 2, n_bootstrap, rng)
    if neg_draw is None or pos_draw is None:
        raise ValueError("AUC replicates need cases of both classes")
    return _bootstrap_auc(s, pos_draw, neg_draw, np.flatnonzero(y == 0))


def percentile_ci(reps: np.ndarray) -> list[float]:
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return [float(lo), float(hi)]


# --- helpers -------------------------------------------------------------------------------------


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # sklearn warns when pred has a class y lacks; the value is still right
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred))


def _check_inputs(y_true, proba, classes) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(proba, dtype=float)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"need at least two classes, got {list(classes)}")
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba must have shape (N, {n_classes}) for classes {list(classes)}, got {p.shape}")
    if y.size == 0:
        raise ValueError("no cases to evaluate (y_true is empty)")
    if p.shape[0] != y.size:
        raise ValueError(f"y_true has {y.size} cases but proba has {p.shape[0]} rows")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold class indices (integers)")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds class indices outside 0..{n_classes - 1}")
    return y, p
