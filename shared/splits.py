"""Patient-level train/validation split for one site's data.

Images of the same patient are strongly correlated, so a patient must never
appear on both sides of a split, or validation scores are optimistic. This
wraps scikit-learn's ``StratifiedGroupKFold`` (patient groups, class
proportions kept) and picks the fold that best fits the requested fraction
while containing every class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def stratified_group_split(
    labels: Sequence[int],
    groups: Sequence[str],
    val_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split case indices into (train_idx, val_idx), both sorted int64 arrays.

    No group (patient) is in both parts; class proportions are roughly kept;
    the same inputs and ``seed`` give the same split. Every class appears in
    validation (and in training) when the patients allow it. An empty
    ``groups`` means every case is its own patient.
    """
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(groups) == 0:
        g = np.arange(n).astype(str)
    elif len(groups) != n:
        raise ValueError(f"got {n} labels but {len(groups)} groups; give one patient id per case")
    else:
        g = np.asarray([str(v) for v in groups])
    n_groups = len(np.unique(g))
    if n_groups < 2:
        raise ValueError(f"cannot make a patient-level validation split: all {n} cases belong to {n_groups} patient(s)")

    n_splits = int(min(max(2, round(1.0 / val_fraction)), n_groups))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    classes = set(np.unique(y).tolist())
    target = val_fraction * n
    best: tuple[tuple[int, float], np.ndarray, np.ndarray] | None = None
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected on small sites.
        warnings.simplefilter("ignore", UserWarning)
        for train_idx, val_idx in sgkf.split(np.zeros(n), y, g):
            missing = len(classes - set(y[val_idx].tolist())) + len(classes - set(y[train_idx].tolist()))
            score = (missing, abs(len(val_idx) - target))  # all classes first, then closest size
            if best is None or score < best[0]:
                best = (score, np.sort(train_idx), np.sort(val_idx))
    assert best is not None
    return best[1].astype(np.int64), best[2].astype(np.int64)
