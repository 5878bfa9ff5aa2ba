"""Local training and inference for segmentation, on in-memory tensors like :mod:`shared.training`.

Conventions mirror :func:`shared.training.train_model`: the whole dataset is a
tensor, batches come from a seeded ``torch.randperm`` per epoch (no DataLoader),
the global RNGs are seeded from the config, and one history dict per epoch is
returned.

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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from shared.lr_schedule import check_schedule, scheduled_lr
from shared.training import batched_logits, seed_everything


@dataclass
class SegDataset:
    """Preprocessed images with their per-label masks (from :class:`shared.imaging.segmentation.SegReport`)."""

    images: torch.Tensor  # (N, 1, S, S) float32, intensities windowed to about [0, 1]
    masks: torch.Tensor  # (N, L, S, S) bool, channels in ``labels`` order
    labels: list[str]
    groups: list[str] = field(default_factory=list)  # patient grouping key per case (site-local)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, S, S), got {tuple(self.images.shape)}")
        if self.masks.ndim != 4 or self.masks.shape[1] != len(self.labels):
            raise ValueError(f"masks must be (N, {len(self.labels)}, S, S) for labels {self.labels}, "
                             f"got {tuple(self.masks.shape)}")
        if self.masks.shape[0] != self.images.shape[0] or self.masks.shape[2:] != self.images.shape[2:]:
            raise ValueError(f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} do not match")
        if self.masks.dtype != torch.bool:
            raise ValueError(f"masks must be bool, got {self.masks.dtype}")
        if self.groups and len(self.groups) != len(self):
            raise ValueError(f"{len(self.groups)} groups for {len(self)} cases")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: list[int] | torch.Tensor) -> SegDataset:
        """The cases at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return SegDataset(
            images=self.images[idx],
            masks=self.masks[idx],
            labels=list(self.labels),
            groups=[self.groups[i] for i in idx.tolist()] if self.groups else [],
        )


@dataclass
class SegTrainConfig:
    """Segmentation training hyper-parameters (the classification :class:`~shared.training.TrainConfig` minus
    class weighting, and a flip switch instead of the augmentation strength)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-3  # the tests' 32-px discs train best at 1e-2; UNets usually want 1e-3..1e-2
    weight_decay: float = 1e-4
    flip: bool = True  # random left-right flip of image and mask together
    seed: int = 0
    threshold: float = 0.5  # sigmoid probability at or above which a pixel is in the predicted mask
    lr_schedule: str = "constant"  # over the epochs: "constant" or "cosine" (shared.lr_schedule)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        check_schedule(self.lr_schedule)

    def to_dict(self) -> dict:
        return asdict(self)


def seg_loss() -> nn.Module:
    """Soft Dice + BCE over independent sigmoid channels (see the module docstring for why)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, include_background=True, batch=False)


def flip_pairs(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (image, mask) pair left-right with probability 0.5, the same draw for both."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images), torch.where(flip, masks.flip(-1), masks)


def train_segmentation(
    model: nn.Module,
    data: SegDataset,
    cfg: SegTrainConfig,
    val: SegDataset | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``data``; return one history dict per epoch.

    Each dict has ``epoch`` (1-based), ``loss`` (mean training loss) and
    ``images_per_s``, and with ``val`` also ``val_loss`` and ``val_dice`` (mean
    per-label Dice over cases, empty-mask policy of
    :mod:`shared.segmentation_metrics`). The same model, data and config give
    the same weights. The model is left in eval mode.
    """
    n = len(data)
    if n < 1:
        raise ValueError("need at least 1 training image")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = seg_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    images, targets = data.images, data.masks

    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, epoch - 1, cfg.epochs, cfg.lr_schedule)
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        t0 = time.perf_counter()
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            x, y = images[idx], targets[idx]
            if cfg.flip:
                x, y = flip_pairs(x, y, gen)
            loss = loss_fn(model(x), y.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        elapsed = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "loss": float(loss_sum) / n,
            "images_per_s": n / elapsed if elapsed > 0 else float("inf"),
        }
        if val is not None and len(val) > 0:
            record.update(evaluate_segmentation_loss(model, val, cfg.threshold))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    return history


def predict_masks(
    model: nn.Module, images: torch.Tensor, threshold: float = 0.5, batch_size: int = 64
) -> torch.Tensor:
    """Predicted masks (N, L, S, S) bool: sigmoid probability >= ``threshold``; the model's mode is restored."""
    return torch.sigmoid(batched_logits(model, images, batch_size)) >= threshold


def evaluate_segmentation_loss(model: nn.Module, data: SegDataset, threshold: float = 0.5) -> dict:
    """``val_loss`` (the training loss) and ``val_dice`` (mean Dice over cases and labels) on ``data``."""
    from shared.segmentation_metrics import dice_per_case

    logits = batched_logits(model, data.images, 64)
    loss = float(seg_loss()(logits, data.masks.float()))
    dice = dice_per_case(torch.sigmoid(logits) >= threshold, data.masks)
    return {"val_loss": loss, "val_dice": float(dice.mean())}


def concat_seg_datasets(parts: list[SegDataset]) -> SegDataset:
    """Pool several sites' cases (same labels); patient groups are prefixed so sites never collide
    (the segmentation counterpart of :func:`shared.dataset.concat_datasets`)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    labels = parts[0].labels
    if any(p.labels != labels for p in parts):
        raise ValueError("datasets have different segment labels")
    return SegDataset(
        images=torch.cat([p.images for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        labels=list(labels),
        groups=[f"{i}:{g}" for i, p in enumerate(parts) for g in p.groups] if all(p.groups for p in parts) else [],
    )
