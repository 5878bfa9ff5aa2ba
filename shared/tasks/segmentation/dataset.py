"""Segmentation's dataset, loss, paired augmentation and inference; trained by :func:`shared.training.train_model`.

Loss: MONAI ``DiceCELoss(sigmoid=True)``, i.e. soft Dice plus binary cross
entropy, each label its own sigmoid channel. Not softmax over background +
labels, because task labels overlap (a nodule is inside the lung) and a
softmax forces every pixel into exactly one class. Dice is computed per image
and label and averaged (``batch=False``), so small structures count as much as
large ones; BCE keeps gradients useful where a label is empty.

Augmentation: a random left-right flip per image, applied to image and mask
together. Only left-right, as in :mod:`shared.augment` (upside-down films are
not realistic inputs); done with ``torch.where`` on the batch rather than a
per-sample MONAI ``RandFlipd``, which costs more than a training step here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from shared.batches import BatchReader
from shared.packed import PackedImages, cat, take
from shared.training import batched_logits


@dataclass
class SegDataset:
    """Preprocessed images with their per-label masks (from :class:`shared.imaging.segmentation.SegReport`)."""

    task_name: ClassVar[str] = "segmentation"

    images: torch.Tensor | PackedImages  # (N, 1, S, S) float32 in [0, 1]; packed: read from the cache per batch
    masks: torch.Tensor  # (N, L, S, S) bool, channels in ``labels`` order
    labels: list[str]
    groups: list[str] = field(default_factory=list)  # patient grouping key per case (site-local)
    # per case: the model input's (row, column) mm per pixel, None where the image has no pixel spacing;
    # empty = unknown for every case. HD95 is in mm where it is known (shared.tasks.segmentation.metrics).
    spacing: list[tuple[float, float] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim < 4 or self.images.shape[1] != 1:  # (N, 1, H, W) or (N, 1, D, H, W): rank is the data's
            raise ValueError(f"images must be (N, 1, *spatial), got {tuple(self.images.shape)}")
        if self.masks.ndim != self.images.ndim or self.masks.shape[1] != len(self.labels):
            raise ValueError(
                f"masks must be (N, {len(self.labels)}, *spatial) for labels {self.labels}, "
                f"got {tuple(self.masks.shape)}"
            )
        if self.masks.shape[0] != self.images.shape[0] or self.masks.shape[2:] != self.images.shape[2:]:
            raise ValueError(f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} do not match")
        if self.masks.dtype != torch.bool:
            raise ValueError(f"masks must be bool, got {self.masks.dtype}")
        if self.groups and len(self.groups) != len(self):
            raise ValueError(f"{len(self.groups)} groups for {len(self)} cases")
        if self.spacing and len(self.spacing) != len(self):
            raise ValueError(f"{len(self.spacing)} pixel spacings for {len(self)} cases")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: list[int] | torch.Tensor) -> SegDataset:
        """The cases at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return SegDataset(
            images=take(self.images, idx),
            masks=self.masks[idx],
            labels=list(self.labels),
            groups=[self.groups[i] for i in idx.tolist()] if self.groups else [],
            spacing=[self.spacing[i] for i in idx.tolist()] if self.spacing else [],
        )


def seg_loss() -> nn.Module:
    """Soft Dice + BCE over independent sigmoid channels (see the module docstring for why)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, include_background=True, batch=False)


def flip_pairs(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (image, mask) pair left-right with probability 0.5, the same draw for both."""
    draw = torch.rand(images.shape[0], generator=generator, device=images.device)
    flip = (draw < 0.5).view(-1, *[1] * (images.ndim - 1))
    return torch.where(flip, images.flip(-1), images), torch.where(flip, masks.flip(-1), masks)


def predict_masks(model: nn.Module, images: torch.Tensor, threshold: float = 0.5, batch_size: int = 64) -> torch.Tensor:
    """Predicted masks (N, L, S, S) bool: sigmoid probability >= ``threshold``; the model's mode is restored."""
    return torch.sigmoid(batched_logits(model, images, batch_size)) >= threshold


def evaluate_segmentation_loss(model: nn.Module, data: SegDataset, threshold: float = 0.5) -> dict:
    """``val_loss`` (the training loss) and ``val_dice`` (mean Dice over cases and labels) on ``data``."""
    from shared.tasks.segmentation.metrics import dice_per_case

    # A batch at a time: the logits of a whole site are as large as its images. Both terms of the loss are
    # means over equally sized images, so the size-weighted mean of the batch losses is the site's loss.
    loss_fn, loss_sum, dice, start = seg_loss(), 0.0, [], 0
    was_training = model.training
    model.eval()
    read = BatchReader(data.images)
    try:
        with torch.inference_mode():
            for x in read.sequential(64):
                logits, masks = model(x), data.masks[start : start + len(x)]
                loss_sum += float(loss_fn(logits, masks.float())) * len(x)
                dice.append(dice_per_case(torch.sigmoid(logits) >= threshold, masks))
                start += len(x)
    finally:
        read.close()
        model.train(was_training)
    dice_all = np.concatenate(dice) if dice else np.zeros(0)
    return {"val_loss": loss_sum / max(1, start), "val_dice": float(dice_all.mean())}


def concat_seg_datasets(parts: list[SegDataset]) -> SegDataset:
    """Pool several sites' cases (same labels); patient groups are prefixed so sites never collide
    (the segmentation counterpart of :func:`shared.tasks.classification.dataset.concat_datasets`)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    labels = parts[0].labels
    if any(p.labels != labels for p in parts):
        raise ValueError("datasets have different segment labels")
    return SegDataset(
        images=cat([p.images for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        labels=list(labels),
        groups=[f"{i}:{g}" for i, p in enumerate(parts) for g in p.groups] if all(p.groups for p in parts) else [],
        spacing=[s for p in parts for s in (p.spacing or [None] * len(p))] if any(p.spacing for p in parts) else [],
    )
