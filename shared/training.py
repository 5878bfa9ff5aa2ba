"""The one training loop every task uses, used alone and inside every federated round.

The task (:mod:`shared.tasks`) supplies what differs: the targets, the loss,
the batch augmentation, the validation figures. Everything else lives here
once: seeded batches, the lr schedule, FedProx's proximal term, the carried
optimizer, BatchNorm statistics re-estimated over the last epoch. Per-image
DP-SGD is :mod:`shared.private_training`, for tasks with a per-image loss.

Batches follow a seeded permutation per epoch and are fetched by
:class:`shared.batches.BatchReader`: plain indexing when the images are an
in-memory tensor (``benchmarks/bench_training.py`` measures it), a DataLoader
over the cache's shards when they are packed (a site's real data: memory that
does not grow with the number of images). Same order, same pixels, same
weights either way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.batches import BatchReader
from shared.lr_schedule import check_schedule, scheduled_lr


@dataclass
class TrainConfig:
    """Local training hyper-parameters; the same object drives local and federated training."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: float = 1.0  # augmentation strength, 0 = off (see shared.augment)
    scanner_augment: float = 0.0  # scanner-appearance augmentation strength, 0 = off (shared.scanner_augment)
    seed: int = 0  # federated callers should vary it per round (e.g. seed + round)
    class_weighted: bool = True  # inverse class frequency weights in the loss
    proximal_mu: float = 0.0  # FedProx: adds mu/2·||w − w_start||² to the loss
    lr_schedule: str = "constant"  # over the epochs: "constant" or "cosine" (shared.lr_schedule)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (BatchNorm needs it), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if min(self.weight_decay, self.augment, self.scanner_augment, self.proximal_mu) < 0:
            raise ValueError("weight_decay, augment, scanner_augment and proximal_mu must be >= 0")
        check_schedule(self.lr_schedule)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_task(cls, task: Any, **values: Any) -> TrainConfig:
        """``task``'s preferred settings (:attr:`shared.tasks.Task.train_defaults`), overridden by ``values``."""
        return cls(**{**task.train_defaults, **values})


SITE_OPTIMIZERS = ("reset", "carry")  # a federated site's AdamW each round: fresh, or carried over (OptimizerCarry)


@dataclass
class OptimizerCarry:
    """AdamW's state handed from one :func:`train_model` call to the next: a site's federated rounds.

    Each round otherwise starts a fresh AdamW, whose first steps (moments still
    empty) are near ``lr · sign(gradient)`` for every weight: on a small site
    that is the whole round. Carrying the moments makes a site's rounds train
    like one continuous run, as pooled training does (measured in the
    benchmark's ``carried optimizer`` rows). The state is derived from the
    site's images, so it stays at the site (``client.federated.OptimizerStore``).
    """

    state: dict | None = None  # AdamW.state_dict() after the last call; None = start fresh


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (warn, don't fail, if none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def task_of(data: object):  # noqa: ANN201 - shared.tasks.Task
    """The task a dataset belongs to (each task's dataset names it in ``task_name``)."""
    from shared.tasks import get_task

    return get_task(type(data).task_name)


def train_model(
    model: nn.Module,
    data,  # noqa: ANN001 - a task's dataset (shared.tasks.base.TaskDataset)
    cfg: TrainConfig,
    val=None,  # noqa: ANN001 - the same task's dataset
    on_epoch: Callable[[dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    carry: OptimizerCarry | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``data``; return one history dict per epoch.

    Each dict has ``epoch`` (1-based), ``loss`` (mean training loss),
    ``images_per_s``, ``lr`` (the epoch's learning rate, after
    ``cfg.lr_schedule``), ``train_acc`` where the task counts correct cases,
    and with ``val`` the task's validation figures (``val_loss`` and e.g.
    ``val_auc`` or ``val_dice``). ``on_epoch`` gets each dict as it is made;
    ``on_batch`` gets (steps done, total steps) over the whole run. With
    ``carry``, AdamW starts from ``carry.state`` (when set; the learning rate
    and weight decay stay ``cfg``'s) and leaves its final state there. The
    global RNGs are seeded from ``cfg.seed``, so the same model, data and
    config give the same weights. A last batch of a single image is skipped
    (BatchNorm cannot train on one).

    BatchNorm running statistics are re-estimated during the last epoch as a
    plain average over its batches (no extra forward passes): the default
    exponential average still holds ~12 % of its (mean 0, var 1) start values
    after 20 steps, which on a small site makes eval-mode predictions collapse
    to one class although training accuracy is perfect.
    """
    task = task_of(data)
    n = len(data)
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = task.augment(cfg.augment, cfg.scanner_augment)
    loss_fn = task.loss(data, cfg.class_weighted)
    images, targets = data.images, task.targets(data)
    read = BatchReader(images)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if carry is not None and carry.state is not None:
        optimizer.load_state_dict(carry.state)
        for group in optimizer.param_groups:  # the moments carry over; the rate and decay are this call's
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
    mu = float(cfg.proximal_mu)
    anchor = [p.detach().clone() for p in params] if mu > 0 else []

    bs = cfg.batch_size
    starts = [s for s in range(0, n, bs) if n - s >= 2]
    total_steps, step = cfg.epochs * len(starts), 0
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, epoch - 1, cfg.epochs, cfg.lr_schedule)
        bn_saved = _start_bn_average(model) if epoch == cfg.epochs else None
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        correct: torch.Tensor | None = torch.zeros((), dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        try:
            for idx, batch in read(perm, starts, bs):
                x, y = augment(batch, targets[idx], gen)
                logits = model(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if mu > 0:  # gradient of mu/2·||w − w0||², added directly instead of through autograd
                    for p, p0 in zip(params, anchor):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - p0, alpha=mu)
                optimizer.step()
                with torch.no_grad():
                    loss_sum += loss.detach() * len(idx)
                    right = task.correct(logits, y)
                    correct = None if right is None or correct is None else correct + right
                seen += len(idx)
                step += 1
                if on_batch is not None:
                    on_batch(step, total_steps)
        finally:  # a callback may raise to cancel training; never leave BN in averaging mode
            if bn_saved is not None:
                _end_bn_average(bn_saved)
        elapsed = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "loss": float(loss_sum) / seen,
            "images_per_s": seen / elapsed if elapsed > 0 else float("inf"),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if correct is not None:
            record["train_acc"] = int(correct) / seen
        if val is not None and len(val) > 0:
            record.update(task.validation(model, val))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    read.close()
    model.eval()
    if carry is not None:
        carry.state = optimizer.state_dict()
    return history


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _start_bn_average(model: nn.Module) -> list[tuple[nn.Module, float | None, torch.Tensor]]:
    """Reset BN running stats and switch them to a cumulative average; returns what to restore."""
    saved = []
    for m in model.modules():
        if isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.reset_running_stats()
            m.momentum = None
    return saved


def _end_bn_average(saved: list[tuple[nn.Module, float | None, torch.Tensor]]) -> None:
    """Restore each BN layer's momentum; its batch counter continues from before the reset."""
    for m, momentum, count in saved:
        m.momentum = momentum
        m.num_batches_tracked += count


def batched_logits(model: nn.Module, images, batch_size: int) -> torch.Tensor:  # noqa: ANN001 - tensor or packed
    """Model outputs for ``images`` in batches, in eval mode without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    read = BatchReader(images)
    try:
        with torch.inference_mode():
            out = [model(x) for x in read.sequential(batch_size)]
    finally:
        read.close()
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
