"""The multi-label dataset, its training targets under the uncertainty policy, and the masked loss.

Why NaN marks a masked target: the one training loop indexes a task's
targets like its images and hands each batch's rows to the loss, so the mask
has to travel with the targets. ``training_targets`` writes NaN where a label
does not train (blank; uncertain under ``ignore``) and :func:`masked_bce`
takes targets and mask apart again.

Loss: binary cross entropy on the logits, one independent sigmoid per finding
(findings co-occur), averaged over the known entries of the batch only, with
an optional positive weight per finding (negatives / positives among its
known training labels) so a rare finding is not learnt as "always absent".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.packed import PackedImages, cat, take
from shared.tasks.multilabel import UNCERTAIN_POLICIES
from shared.training import batched_logits


@dataclass
class MultilabelDataset:
    """Preprocessed images with one raw label per finding (1, 0, -1 uncertain, NaN unknown) and site bookkeeping."""

    task_name: ClassVar[str] = "multilabel"

    images: torch.Tensor | PackedImages  # (N, 1, S, S) float32, intensities windowed to about [0, 1]
    values: torch.Tensor  # (N, F) float32: 1, 0, -1 or NaN, as the label CSV writes them
    findings: list[str]
    uncertain: str = "ignore"  # the consortium's policy for -1 at training time
    groups: list[str] = field(default_factory=list)  # patient grouping key per case (site-local)
    keys: list[str] = field(default_factory=list)  # label-CSV key per case (site-local)
    paths: list[str] = field(default_factory=list)  # path relative to the data folder (site-local)
    manufacturers: dict[str, int] = field(default_factory=dict)  # usable images per scanner manufacturer

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape != (self.images.shape[0], len(self.findings)):
            raise ValueError(
                f"values must be (N, {len(self.findings)}) for findings {self.findings}, got {tuple(self.values.shape)}"
            )
        known = torch.isnan(self.values) | (self.values == 1) | (self.values == 0) | (self.values == -1)
        if not bool(known.all()):
            raise ValueError("finding values must be 1, 0, -1 or NaN (unknown)")
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: list[int] | torch.Tensor) -> MultilabelDataset:
        """The cases at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        return MultilabelDataset(
            images=take(self.images, idx),
            values=self.values[idx],
            findings=list(self.findings),
            uncertain=self.uncertain,
            groups=[self.groups[i] for i in pick] if self.groups else [],
            keys=[self.keys[i] for i in pick] if self.keys else [],
            paths=[self.paths[i] for i in pick] if self.paths else [],
        )

    def certain(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, mask) for evaluation, (N, F) each: the 1/0 labels and where they are certain (never -1 or blank)."""
        v = self.values.numpy()
        mask = (v == 1) | (v == 0)
        return np.where(mask, v, 0).astype(np.int64), mask

    def counts(self) -> dict[str, dict[str, int]]:
        """Per finding: positive, negative, uncertain and unknown cases (data QC; stays at the site)."""
        v = self.values
        return {
            f: {
                "positive": int((v[:, i] == 1).sum()),
                "negative": int((v[:, i] == 0).sum()),
                "uncertain": int((v[:, i] == -1).sum()),
                "unknown": int(torch.isnan(v[:, i]).sum()),
            }
            for i, f in enumerate(self.findings)
        }


def training_targets(values: torch.Tensor, uncertain: str) -> torch.Tensor:
    """The targets the loss sees: 1/0, and NaN where nothing is learnt (blank; -1 under ``ignore``).

    ``ones`` trains an uncertain label as positive, ``zeros`` as negative (Irvin et al. 2019, CheXpert)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    fill = {"ignore": float("nan"), "ones": 1.0, "zeros": 0.0}[uncertain]
    return torch.where(values == -1, torch.full_like(values, fill), values).float()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per finding, negatives / positives among its known targets (1 where either side is empty): BCE's
    ``pos_weight``, so positives and negatives of each finding weigh the same in total."""
    pos = (targets == 1).sum(0).float()
    neg = (targets == 0).sum(0).float()
    return torch.where((pos > 0) & (neg > 0), neg / pos.clamp(min=1), torch.ones_like(pos))


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross entropy over the entries where ``mask`` is true; 0 (with a gradient) when none is."""
    mask = mask.to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, torch.where(mask.bool(), targets, torch.zeros_like(targets)), pos_weight=pos_weight, reduction="none"
    )
    return (per_entry * mask).sum() / mask.sum().clamp(min=1.0)


def nan_masked_bce(pos_weight: torch.Tensor | None = None):  # noqa: ANN201 - Callable[[Tensor, Tensor], Tensor]
    """The training loss over NaN-masked targets (:func:`training_targets`)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        return masked_bce(logits, torch.nan_to_num(targets), known, pos_weight)

    return loss


def predict_proba(model: nn.Module, images: torch.Tensor | PackedImages, batch_size: int = 256) -> np.ndarray:
    """Probability per finding (N, F) float32: independent sigmoids; eval mode, no gradients, mode restored."""
    return torch.sigmoid(batched_logits(model, images, batch_size).float()).numpy()


def concat_multilabel(parts: list[MultilabelDataset]) -> MultilabelDataset:
    """Pool several sites' cases (same findings and policy); patient groups are prefixed so sites never collide."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    if any(p.findings != first.findings for p in parts):
        raise ValueError("datasets have different findings")
    return MultilabelDataset(
        images=cat([p.images for p in parts]),
        values=torch.cat([p.values for p in parts]),
        findings=list(first.findings),
        uncertain=first.uncertain,
        groups=[f"{i}:{g}" for i, p in enumerate(parts) for g in p.groups] if all(p.groups for p in parts) else [],
        keys=[k for p in parts for k in p.keys],
        paths=[f"{i}:{q}" for i, p in enumerate(parts) for q in p.paths],
    )
