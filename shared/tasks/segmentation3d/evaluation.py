"""Scoring a model on a site's volumes: one pass, one case at a time, loss and figures together.

Every evaluation of the task goes through :func:`evaluate_cases`: the per-epoch validation (loss and
Dice only: HD95 costs a distance transform per label and case), the federated round's aggregate
metrics, fine-tuning's before/after scores, the benchmark's scores and the site report. Each case is
predicted by sliding windows (:mod:`shared.tasks.segmentation3d.inference`), scored
(:mod:`shared.tasks.segmentation3d.metrics`) and dropped before the next is read.

The loss is the training loss (:func:`seg3d_loss`) over each whole volume, averaged over cases (each
volume counts once, whatever its size, as each case does in the Dice mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.tasks.segmentation3d.dataset import VolumeCases
from shared.tasks.segmentation3d.inference import iter_case_logits
from shared.tasks.segmentation3d.metrics import CaseScores, Seg3DMetrics, score_case, summarize


def seg3d_loss() -> nn.Module:
    """Soft Dice + cross entropy over a softmax of background and segments (MONAI ``DiceCELoss``).

    ``to_onehot_y`` turns the (B, 1, ...) label patch into channels; ``include_background=True`` as MONAI's
    3D tutorials do with a softmax (the background channel is the complement of the rest, and keeping it
    steadies the Dice term on patches without any segment). ``batch=True``: Dice over the whole batch of
    patches rather than per patch, because a random patch often lacks a segment and a per-patch Dice of
    an absent segment is all noise (nnU-Net's "batch Dice" for the same reason). Nothing is masked."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, batch=True)


@dataclass
class Evaluation:
    """The per-case scores of one pass and the mean loss over the cases."""

    cases: list[CaseScores]
    loss: float

    def summary(self, labels: list[str], n_bootstrap: int, seed: int) -> Seg3DMetrics:
        return summarize(self.cases, labels, n_bootstrap, seed)

    @property
    def mean_dice(self) -> float:
        """Mean over cases of the mean over labels (for the training history)."""
        return float(np.mean([c.dice.mean() for c in self.cases])) if self.cases else float("nan")


def evaluate_cases(model: nn.Module, data: VolumeCases, with_hd95: bool = True, with_loss: bool = True) -> Evaluation:
    """Predict and score every case of ``data`` in turn (see the module docstring)."""
    loss_fn = seg3d_loss() if with_loss else None
    cases, losses = [], []
    k = len(data.labels)
    for i, logits in iter_case_logits(model, data):
        ref = data.read_labels(i)
        if loss_fn is not None:
            target = torch.from_numpy(ref)[None, None].long()
            losses.append(float(loss_fn(logits[None], target)))
        pred = logits.argmax(0).to(torch.uint8).numpy()
        del logits
        cases.append(score_case(pred, ref, k, data.spacing[i], with_hd95=with_hd95))
        data.release(i)
    return Evaluation(cases=cases, loss=float(np.mean(losses)) if losses else float("nan"))
