"""Classification's figures: class weights, probabilities, AUC with its bootstrap interval.

One label per image; the AUC is that of the positive class (index 1) for two
classes and macro one-vs-rest beyond. Only aggregates leave a site.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.tasks.classification.dataset import SiteDataset
from shared.training import batched_logits


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, n / (C · n_c); 0 for a class absent here (it never enters the loss)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = labels.numel() / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C) as float32, in eval mode without gradients; the model's mode is restored."""
    return torch.softmax(batched_logits(model, images, batch_size).float(), dim=1).numpy()


def evaluate(model: nn.Module, data: SiteDataset, batch_size: int = 256) -> dict:
    """``val_loss`` (unweighted cross entropy), ``val_acc`` and ``val_auc`` of ``model`` on ``data``.

    ``val_auc`` is the ROC AUC of the positive class (index 1) for two classes,
    macro one-vs-rest for more, and None when a class is missing from ``data``.
    """
    from sklearn.metrics import roc_auc_score

    logits = batched_logits(model, data.images, batch_size)
    y = data.labels
    loss = float(F.cross_entropy(logits, y))
    acc = float((logits.argmax(1) == y).float().mean())
    proba = torch.softmax(logits.float(), 1).numpy()
    y_np = y.numpy()
    auc = None
    num_classes = proba.shape[1]
    if len(np.unique(y_np)) == num_classes:
        if num_classes == 2:
            auc = float(roc_auc_score(y_np, proba[:, 1]))
        else:
            auc = float(roc_auc_score(y_np, proba, multi_class="ovr", average="macro"))
    return {"val_loss": loss, "val_acc": acc, "val_auc": auc}


def auc_with_ci(
    model: nn.Module, data: SiteDataset, n_bootstrap: int = 500, seed: int = 0
) -> tuple[float, float, float] | None:
    """(AUC, 95 % CI low, high) by the stratified bootstrap of :mod:`shared.metrics`; None where AUC is undefined.

    Sent by sites with their evaluation (three aggregate numbers), so a coordinator's cross-site table and the
    model card can show per-site intervals without any per-case value leaving the site.
    """
    from shared.metrics import evaluate_predictions

    if len(data) == 0 or len(set(data.labels.tolist())) < len(data.classes):
        return None
    m = evaluate_predictions(
        data.labels.numpy(), predict_proba(model, data.images), data.classes, n_bootstrap=n_bootstrap, seed=seed
    )
    if m["auc"] is None:
        return None
    low, high = m["auc_ci95"] or (m["auc"], m["auc"])
    return float(m["auc"]), float(low), float(high)


def auc_score(model: nn.Module, data: SiteDataset) -> float:
    """ROC AUC of ``model`` on ``data`` as ``fedrad-site evaluate`` computes it (positive class last, macro
    one-vs-rest beyond two classes); NaN where it is undefined (no cases, or one class only)."""
    from shared.metrics import evaluate_predictions

    if len(data) == 0 or len(set(data.labels.tolist())) < 2:
        return float("nan")
    m = evaluate_predictions(data.labels.numpy(), predict_proba(model, data.images), data.classes, n_bootstrap=0)
    return float("nan") if m["auc"] is None else float(m["auc"])
