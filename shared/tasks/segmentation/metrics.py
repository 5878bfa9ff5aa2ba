"""Segmentation evaluation: per-label Dice and HD95 per case, and their means with 95 % CIs.

MONAI computes the figures (``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)``);
this module adds FedRad's empty-mask policy and the summary. Masks are
(N, L, S, S) bool with one channel per task label, as
:class:`shared.imaging.segmentation.SegReport` and
:func:`shared.tasks.segmentation.dataset.predict_masks` give them.

Empty-mask policy (a SEG's empty segment means "looked, found none"):

* Dice: both empty → 1.0 (a correct "nothing here" is a success and must count,
  or a model that marks a nodule on every normal film would not be penalised);
  exactly one empty → 0.0. This is MONAI's ``ignore_empty=False``.
* HD95: defined only when both masks are non-empty; otherwise the case is left
  out of that label's HD95 (``None`` per case). A distance between two empty
  sets means nothing, and 0 would flatter the mean with cases that have no
  boundary; a missed or spurious structure has no finite distance, and is
  already scored 0 by Dice. How many cases were left out, and why, is reported
  (``n_both_empty``, ``n_false_positive``, ``n_false_negative``).

Units of HD95: millimetres for every case whose pixel spacing is known (``spacing``:
the model input's (row, column) mm per pixel, from the image's PixelSpacing or
ImagerPixelSpacing, :func:`shared.imaging.planar.model_input_spacing`), pixels of the
model input for a case without one. The two are kept apart everywhere (``hd95_mm_*``
and ``hd95_px_*`` figures, each with its own count): a mean over millimetres and
pixels together would be a number in no unit at all.

Confidence intervals: a seeded percentile bootstrap of the mean over cases
(cases resampled with replacement), the same 2.5/97.5 percentile rule as
:mod:`shared.metrics`; ``None`` with fewer than two cases or ``n_bootstrap=0``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.metrics import percentile_ci


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be (N, L, S, S), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape[0] == 0:
        raise ValueError("no cases to evaluate")
    return pred.bool().float(), target.bool().float()


def dice_per_case(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Dice per case and label, (N, L): both empty → 1, exactly one empty → 0 (MONAI ``ignore_empty=False``)."""
    from monai.metrics import DiceMetric

    p, t = _check(pred, target)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    return metric(p, t).numpy().astype(float)


Spacing = tuple[float, float]  # (row, column) millimetres per pixel of the model input


def hd95_per_case(
    pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[Spacing | None] | None = None
) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance per case and label, (N, L); NaN unless both are non-empty.

    ``spacing`` holds one entry per case: its (row, column) mm per pixel, or None when unknown. A case with a
    spacing is measured in mm, one without in pixels (no ``spacing`` at all: every case in pixels); which is
    which is the caller's to keep apart (:func:`evaluate_segmentation` does).
    """
    from monai.metrics import HausdorffDistanceMetric

    p, t = _check(pred, target)
    per_case = _per_case_spacing(spacing, p.shape[0])
    both = (p.flatten(2).any(2) & t.flatten(2).any(2)).numpy()
    out = np.full(both.shape, np.nan)
    if both.any():
        # MONAI warns (and returns inf/nan) on empty masks; only fully defined pairs go in.
        b_idx, l_idx = np.nonzero(both)
        sel_p = p[b_idx, l_idx].unsqueeze(1)
        sel_t = t[b_idx, l_idx].unsqueeze(1)
        sel_spacing = [list(per_case[b] or (1.0, 1.0)) for b in b_idx]  # unknown: one pixel per unit
        metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        with warnings.catch_warnings():  # MONAI 1.6 trips its own deprecation of always_return_as_numpy
            warnings.simplefilter("ignore", FutureWarning)
            out[b_idx, l_idx] = metric(sel_p, sel_t, spacing=sel_spacing).numpy()[:, 0]
    return out


def _per_case_spacing(spacing: Sequence[Spacing | None] | None, n: int) -> list[Spacing | None]:
    """One validated spacing (or None) per case; a wrong length is a programming error, said plainly."""
    if spacing is None or len(spacing) == 0:
        return [None] * n
    if len(spacing) != n:
        raise ValueError(f"{len(spacing)} pixel spacings for {n} cases")
    out: list[Spacing | None] = []
    for s in spacing:
        if s is None:
            out.append(None)
            continue
        row, col = (float(v) for v in s)
        if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
            raise ValueError(f"pixel spacing must be two positive numbers (mm), got {tuple(s)}")
        out.append((row, col))
    return out


def bootstrap_mean_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile-bootstrap 95 % CI of the mean of ``values`` (NaN dropped); None below two values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size < 2 or n_bootstrap <= 0:
        return None
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, v.size, size=(n_bootstrap, v.size))].mean(axis=1)
    return percentile_ci(reps)


@dataclass
class LabelSummary:
    """One label's figures over all cases; HD95 in mm and in pixels kept apart (see the module docstring)."""

    dice_mean: float
    dice_ci95: list[float] | None
    hd95_mm_mean: float | None  # None when no case with a known spacing has both masks non-empty
    hd95_mm_ci95: list[float] | None
    n_hd95_mm: int  # cases with a pixel spacing and both masks non-empty (the ones hd95_mm averages)
    hd95_px_mean: float | None  # the same over cases without a pixel spacing, in model-input pixels
    hd95_px_ci95: list[float] | None
    n_hd95_px: int
    n_both_empty: int  # Dice 1, no HD95
    n_false_positive: int  # target empty, prediction not: Dice 0, no HD95
    n_false_negative: int  # target non-empty, prediction empty: Dice 0, no HD95

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SegMetrics:
    """Per-label Dice and HD95: per case (site-local) and summarised with 95 % CIs."""

    labels: list[str]
    dice: np.ndarray  # (N, L)
    hd95: np.ndarray  # (N, L), NaN where undefined; in mm where ``in_mm``, else in pixels
    in_mm: np.ndarray  # (N,) bool: the case's pixel spacing is known, its HD95 is in mm
    per_label: dict[str, LabelSummary]
    n_bootstrap: int

    @property
    def n_cases(self) -> int:
        return int(self.dice.shape[0])

    @property
    def mean_dice(self) -> float:
        """Macro mean over labels of the per-label mean Dice."""
        return float(np.mean([s.dice_mean for s in self.per_label.values()]))

    def hd95_in(self, unit: str) -> np.ndarray:
        """Per-case HD95 (N, L) of the cases measured in ``unit`` ("mm" or "px"); NaN for every other case."""
        rows = self.in_mm if unit == "mm" else ~self.in_mm
        return np.where(rows[:, None], self.hd95, np.nan)

    def to_json(self, include_cases: bool = False) -> dict:
        """JSON-ready dict; per-case figures only with ``include_cases`` (they are for site-local reports)."""
        out = {
            "labels": list(self.labels),
            "n_cases": self.n_cases,
            "n_cases_without_spacing": int((~self.in_mm).sum()),
            "n_bootstrap": self.n_bootstrap,
            "hd95_units": dict(HD95_UNITS),
            "mean_dice": self.mean_dice,
            "per_label": {k: v.to_json() for k, v in self.per_label.items()},
        }
        if include_cases:
            out["cases"] = {
                "dice": self.dice.tolist(),
                **{
                    f"hd95_{unit}": [[None if np.isnan(x) else float(x) for x in row] for row in self.hd95_in(unit)]
                    for unit in ("mm", "px")
                },
            }
        return out


HD95_UNITS = {
    "hd95_mm": "millimetres: cases whose image has PixelSpacing or ImagerPixelSpacing",
    "hd95_px": "pixels of the model input: cases whose image has no pixel spacing",
}


def evaluate_segmentation(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: list[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    spacing: Sequence[Spacing | None] | None = None,
) -> SegMetrics:
    """Dice and HD95 of predicted masks against reference masks, both (N, L, S, S) bool, channels in ``labels``.

    ``spacing``: per case, the model input's (row, column) mm per pixel or None (see :func:`hd95_per_case`).
    """
    p, t = _check(pred, target)
    if p.shape[1] != len(labels):
        raise ValueError(f"masks have {p.shape[1]} channels but there are {len(labels)} labels {labels}")
    per_case = _per_case_spacing(spacing, p.shape[0])
    in_mm = np.array([s is not None for s in per_case], dtype=bool)
    dice = dice_per_case(p, t)
    hd = hd95_per_case(p, t, per_case)
    p_any = p.flatten(2).any(2).numpy()
    t_any = t.flatten(2).any(2).numpy()
    per_label = {}
    for k, name in enumerate(labels):
        mm = hd[in_mm, k][~np.isnan(hd[in_mm, k])]
        px = hd[~in_mm, k][~np.isnan(hd[~in_mm, k])]
        per_label[name] = LabelSummary(
            dice_mean=float(dice[:, k].mean()),
            dice_ci95=bootstrap_mean_ci(dice[:, k], n_bootstrap, seed + k),
            hd95_mm_mean=float(mm.mean()) if mm.size else None,
            hd95_mm_ci95=bootstrap_mean_ci(mm, n_bootstrap, seed + k),
            n_hd95_mm=int(mm.size),
            hd95_px_mean=float(px.mean()) if px.size else None,
            hd95_px_ci95=bootstrap_mean_ci(px, n_bootstrap, seed + k),
            n_hd95_px=int(px.size),
            n_both_empty=int((~p_any[:, k] & ~t_any[:, k]).sum()),
            n_false_positive=int((p_any[:, k] & ~t_any[:, k]).sum()),
            n_false_negative=int((~p_any[:, k] & t_any[:, k]).sum()),
        )
    return SegMetrics(
        labels=list(labels), dice=dice, hd95=hd, in_mm=in_mm, per_label=per_label, n_bootstrap=int(n_bootstrap)
    )
