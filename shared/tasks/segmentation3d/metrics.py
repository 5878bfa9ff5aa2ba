"""3D segmentation figures per case and label (Dice, HD95 in millimetres) and their summary with 95 % CIs.

Label maps are (D, H, W) uint8, 0 background and k the segment ``labels[k - 1]``. Per case and label:

* Dice from one confusion count of the two maps (a single pass, no one-hot volumes in memory).
  Both empty → 1.0 (a correct "not in this volume" is a success), exactly one empty → 0.0: the
  policy of the 2D task (:mod:`shared.tasks.segmentation.metrics`, MONAI ``ignore_empty=False``).
* HD95: MONAI's ``compute_hausdorff_distance(percentile=95)``, the symmetric 95th-percentile surface
  distance, at the case's voxel spacing, so **in millimetres**: a volume resampled to 3 × 1 × 1 mm
  counts a one-voxel miss along axis 0 as 3 mm. Computed on the union bounding box of both masks with a
  one-voxel margin (the same surfaces, a fraction of the voxels). Undefined (NaN) unless both masks are
  non-empty; such cases are left out of the label's HD95 mean and **counted** (``n_hd95_undefined``,
  split into both empty / false positive / false negative), never averaged in as 0 or inf.

Summary: per label the mean over cases with a percentile-bootstrap 95 % CI (cases resampled,
:func:`shared.tasks.segmentation.metrics.bootstrap_mean_ci`); the headline is the macro mean of the
per-label mean Dice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.tasks.segmentation.metrics import bootstrap_mean_ci
from shared.tasks.segmentation3d.dataset import slabs


def confusion(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) voxel counts, rows the reference class, columns the predicted one (counted a
    slab at a time: bincount works in 8-byte integers)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    counts = np.zeros(n_classes * n_classes, dtype=np.int64)
    for z in slabs(ref.shape):
        flat = ref[z].astype(np.int64).ravel() * n_classes + pred[z].ravel()
        counts += np.bincount(flat, minlength=n_classes * n_classes)[: n_classes * n_classes]
    return counts.reshape(n_classes, n_classes)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Dice per segment (classes 1..K) from a confusion matrix; both empty → 1, exactly one empty → 0."""
    tp = np.diag(cm)[1:].astype(float)
    size = cm.sum(axis=1)[1:] + cm.sum(axis=0)[1:]
    return np.where(size > 0, 2 * tp / np.maximum(size, 1), 1.0)


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm between two (D, H, W) bool masks at ``spacing`` (mm per voxel, axes 0-2); NaN if either is empty."""
    from monai.metrics import compute_hausdorff_distance

    both = pred | ref
    if not (pred.any() and ref.any()):
        return float("nan")
    box = []
    for axis in range(3):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, hit[0] - 1), hit[-1] + 2))
    p = torch.from_numpy(np.ascontiguousarray(pred[tuple(box)]))[None, None].float()
    r = torch.from_numpy(np.ascontiguousarray(ref[tuple(box)]))[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.6 trips its own deprecation of always_return_as_numpy
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(p, r, percentile=95, spacing=[float(s) for s in spacing])
    return float(torch.as_tensor(value).reshape(-1)[0])


@dataclass
class CaseScores:
    """One case's figures, per segment label (arrays of length K)."""

    dice: np.ndarray
    hd95: np.ndarray  # mm; NaN where undefined
    pred_any: np.ndarray  # bool: the prediction has the segment
    ref_any: np.ndarray  # bool: the reference has it


def score_case(
    pred: np.ndarray, ref: np.ndarray, n_labels: int, spacing: Sequence[float], with_hd95: bool = True
) -> CaseScores:
    """Dice (and HD95 in mm) of a predicted label map against the reference, one entry per segment 1..K."""
    cm = confusion(pred, ref, n_labels + 1)
    dice = dice_from_confusion(cm)
    pred_any, ref_any = cm.sum(axis=0)[1:] > 0, cm.sum(axis=1)[1:] > 0
    hd = np.full(n_labels, np.nan)
    if with_hd95:
        for k in np.flatnonzero(pred_any & ref_any):
            hd[k] = hd95_mm(pred == k + 1, ref == k + 1, spacing)
    return CaseScores(dice=dice, hd95=hd, pred_any=pred_any, ref_any=ref_any)


@dataclass
class LabelSummary3D:
    """One segment's figures over the cases."""

    dice_mean: float
    dice_ci95: list[float] | None
    hd95_mm_mean: float | None  # None when no case has both masks non-empty
    hd95_mm_ci95: list[float] | None
    n_hd95_mm: int  # cases whose HD95 is defined (both masks non-empty): what hd95_mm_mean averages
    n_hd95_undefined: int  # the other cases: n_both_empty + n_false_positive + n_false_negative
    n_both_empty: int  # Dice 1, no HD95
    n_false_positive: int  # reference empty, prediction not: Dice 0, no HD95
    n_false_negative: int  # reference has it, prediction empty: Dice 0, no HD95

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Seg3DMetrics:
    """Per-case figures (site-local) and their per-label summary."""

    labels: list[str]
    dice: np.ndarray  # (N, K)
    hd95: np.ndarray  # (N, K) mm, NaN where undefined
    pred_any: np.ndarray  # (N, K) bool
    ref_any: np.ndarray  # (N, K) bool
    per_label: dict[str, LabelSummary3D]
    n_bootstrap: int

    @property
    def n_cases(self) -> int:
        return int(self.dice.shape[0])

    @property
    def mean_dice(self) -> float:
        """Macro mean over labels of the per-label mean Dice: the headline."""
        return float(np.mean([s.dice_mean for s in self.per_label.values()]))

    def to_json(self, include_cases: bool = False) -> dict:
        """JSON-ready dict; per-case figures only with ``include_cases`` (site-local reports)."""
        out = {
            "labels": list(self.labels),
            "n_cases": self.n_cases,
            "n_bootstrap": self.n_bootstrap,
            "hd95_unit": "mm",
            "mean_dice": self.mean_dice,
            "per_label": {k: v.to_json() for k, v in self.per_label.items()},
        }
        if include_cases:
            out["cases"] = {
                "dice": self.dice.tolist(),
                "hd95_mm": [[None if np.isnan(x) else float(x) for x in row] for row in self.hd95],
            }
        return out


def summarize(cases: list[CaseScores], labels: list[str], n_bootstrap: int = 1000, seed: int = 0) -> Seg3DMetrics:
    """The per-label means and 95 % CIs of per-case scores (at least one case)."""
    if not cases:
        raise ValueError("no cases to evaluate")
    dice = np.stack([c.dice for c in cases])
    hd = np.stack([c.hd95 for c in cases])
    p_any = np.stack([c.pred_any for c in cases])
    r_any = np.stack([c.ref_any for c in cases])
    per_label = {}
    for k, name in enumerate(labels):
        defined = hd[:, k][~np.isnan(hd[:, k])]
        per_label[name] = LabelSummary3D(
            dice_mean=float(dice[:, k].mean()),
            dice_ci95=bootstrap_mean_ci(dice[:, k], n_bootstrap, seed + k),
            hd95_mm_mean=float(defined.mean()) if defined.size else None,
            hd95_mm_ci95=bootstrap_mean_ci(defined, n_bootstrap, seed + k),
            n_hd95_mm=int(defined.size),
            n_hd95_undefined=int(len(cases) - defined.size),
            n_both_empty=int((~p_any[:, k] & ~r_any[:, k]).sum()),
            n_false_positive=int((p_any[:, k] & ~r_any[:, k]).sum()),
            n_false_negative=int((~p_any[:, k] & r_any[:, k]).sum()),
        )
    return Seg3DMetrics(
        labels=list(labels),
        dice=dice,
        hd95=hd,
        pred_any=p_any,
        ref_any=r_any,
        per_label=per_label,
        n_bootstrap=int(n_bootstrap),
    )
