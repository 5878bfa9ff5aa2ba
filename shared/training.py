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
weights either way. That is the default of :meth:`shared.tasks.Task.train_batches`;
a task whose cases cannot be batched whole (3D volumes) supplies its own
:class:`shared.batches.TrainBatches` (patches), drawn from the loop's same
seeded generator, and everything else below stays the loop's.

Where it runs is the site's :class:`shared.hardware.Hardware` (site.yaml ``device``,
``threads``, ``amp``): on CUDA the model and each batch go to the GPU (pinned,
non-blocking copies), the batch is augmented there, the forward pass runs under
mixed precision (bf16, or fp16 with a gradient scaler) with ``channels_last`` for 2D
convnets, and the model comes back to the CPU in the default layout, so weights
saved or sent are CPU float32 whatever trained them. On CPU none of that happens:
CPU training is bit-for-bit what it always was (``benchmarks/bench_throughput.py``
measures both against a bare PyTorch loop).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import hardware as hwmod
from shared.batches import BatchReader, TrainBatches
from shared.hardware import Hardware
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


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (warn, don't fail, if none).

    ``deterministic=False`` (training on a GPU) lets cuDNN pick its fastest kernels: mixed-precision GPU
    training is not bit-reproducible anyway, and the deterministic ones cost up to a few times the time.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


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
    hardware: Hardware | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``data``; return one history dict per epoch.

    Each dict has ``epoch`` (1-based), ``loss`` (mean training loss),
    ``images_per_s``, ``lr`` (the epoch's learning rate, after
    ``cfg.lr_schedule``), ``train_acc`` where the task counts correct cases,
    and with ``val`` the task's validation figures (``val_loss`` and e.g.
    ``val_auc`` or ``val_dice``). ``on_epoch`` gets each dict as it is made;
    ``on_batch`` gets (steps done, total steps) over the whole run. With
    ``carry``, AdamW starts from ``carry.state`` (when set; the learning rate
    and weight decay stay ``cfg``'s) and leaves its final state there (on the
    CPU). The global RNGs are seeded from ``cfg.seed``, so the same model, data
    and config give the same weights (on CPU, bit for bit). A last batch of a
    single image is skipped (BatchNorm cannot train on one).

    ``hardware`` (default :func:`shared.hardware.active`) says where: see the
    module docstring. The model is returned where it came from (the CPU).

    BatchNorm running statistics are re-estimated during the last epoch as a
    plain average over its batches (no extra forward passes): the default
    exponential average still holds ~12 % of its (mean 0, var 1) start values
    after 20 steps, which on a small site makes eval-mode predictions collapse
    to one class although training accuracy is perfect.
    """
    hw = hardware or hwmod.active()
    n = len(data)
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    batches = task_of(data).train_batches(data, cfg.batch_size, pin_memory=hw.is_cuda)
    try:
        with hwmod.using(hw), hwmod.placed(model, hw, batches.sample_ndim) as channels_last:
            return _train(model, data, cfg, val, on_epoch, on_batch, carry, hw, channels_last, batches)
    finally:
        batches.close()


def _train(
    model: nn.Module,
    data,  # noqa: ANN001
    cfg: TrainConfig,
    val,  # noqa: ANN001
    on_epoch: Callable[[dict], None] | None,
    on_batch: Callable[[int, int], None] | None,
    carry: OptimizerCarry | None,
    hw: Hardware,
    channels_last: bool,
    batches: TrainBatches,
) -> list[dict]:
    """:func:`train_model`'s loop, with the model already on ``hw``'s device; ``batches`` are the task's."""
    task = task_of(data)
    dev = hw.torch_device
    seed_everything(cfg.seed, deterministic=not hw.is_cuda)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order: always drawn on the CPU
    # Augmentation draws on the batch's device (a CUDA batch is augmented on the GPU), seeded the same way.
    aug_gen = torch.Generator(dev).manual_seed(cfg.seed) if hw.is_cuda else gen
    augment = task.augment(cfg.augment, cfg.scanner_augment)
    loss_fn = task.loss(data, cfg.class_weighted)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if carry is not None and carry.state is not None:
        optimizer.load_state_dict(carry.state)  # moves the moments to the parameters' device
        for group in optimizer.param_groups:  # the moments carry over; the rate and decay are this call's
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
    mu = float(cfg.proximal_mu)
    anchor = [p.detach().clone() for p in params] if mu > 0 else []
    amp = hw.is_cuda and hw.amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda") if amp and hw.needs_grad_scaler else None

    total_steps, step = cfg.epochs * batches.steps, 0
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, epoch - 1, cfg.epochs, cfg.lr_schedule)
        bn_saved = _start_bn_average(model) if epoch == cfg.epochs else None
        epoch_batches = batches.epoch(gen)  # draws the epoch's order (or patches) from gen, before augmenting
        loss_sum = torch.zeros((), device=dev)  # summed on the device: no per-batch host sync
        correct: torch.Tensor | None = torch.zeros((), dtype=torch.long, device=dev)
        seen = 0
        t0 = time.perf_counter()
        try:
            for idx, x, y in epoch_batches:
                if hw.is_cuda:
                    x, y = hwmod.to_device(x, dev), hwmod.to_device(y, dev)
                x, y = augment(x, y, aug_gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if amp:
                    with hwmod.autocast(hw):
                        logits = model(x)
                    loss = loss_fn(logits.float(), y)  # the task's loss in float32, whatever it does inside
                else:
                    logits = model(x)
                    loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if mu > 0:
                        scaler.unscale_(optimizer)  # the proximal gradient below is unscaled
                else:
                    loss.backward()
                if mu > 0:  # gradient of mu/2·||w − w0||², added directly instead of through autograd
                    for p, p0 in zip(params, anchor):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - p0, alpha=mu)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
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
        hwmod.synchronize(hw)  # the epoch's time includes the GPU's queued work
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
    model.eval()
    if carry is not None:
        carry.state = _on_cpu(optimizer.state_dict()) if hw.is_cuda else optimizer.state_dict()
    return history


def _on_cpu(obj: Any) -> Any:
    """``obj`` (an optimizer's state dict) with every tensor on the CPU: carried state stays at the site, on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


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


INFERENCE_PIXELS = 256 * 128 * 128  # pixels (or voxels) one inference batch holds at most: 256 images at 128 px


def inference_batch_size(requested: int, spatial: Sequence[int]) -> int:
    """``requested``, or fewer so a batch holds at most :data:`INFERENCE_PIXELS` pixels.

    Why: evaluation asks for 256 images a batch, which at 64 px is 1M pixels; a DenseNet121 at 224 px
    keeps every dense block's concatenated features of the whole batch, and 256 of them took several GB
    of RSS. Outputs do not depend on the batch size (eval mode), so the cap changes memory, not results.
    """
    pixels = max(1, math.prod(int(d) for d in spatial))
    return max(1, min(int(requested), INFERENCE_PIXELS // pixels))


def batched_logits(
    model: nn.Module,
    images,  # noqa: ANN001 - a tensor or shared.packed.PackedImages
    batch_size: int,
    hardware: Hardware | None = None,
) -> torch.Tensor:
    """Model outputs for ``images`` in batches, in eval mode without gradients; the model's mode is restored.

    Runs on ``hardware`` (default :func:`shared.hardware.active`), or where the model already is; the
    outputs are always on the CPU (float32 on a GPU), where metrics are computed. ``batch_size`` is capped
    by :func:`inference_batch_size`, so a 512 px backbone does not evaluate 256 images at once.
    """
    hw = hardware or hwmod.active()
    batch_size = inference_batch_size(batch_size, images.shape[2:])
    was_training = model.training
    model.eval()
    read = BatchReader(images, pin_memory=hw.is_cuda)
    try:
        with hwmod.placed(model, hw, images.ndim) as channels_last, torch.inference_mode():
            dev = hwmod.device_of(model)
            if dev.type == "cpu":
                out = [model(x) for x in read.sequential(batch_size)]
            else:
                out = []
                for x in read.sequential(batch_size):
                    x = hwmod.to_device(x, dev, channels_last)
                    with hwmod.autocast(hw) if hw.is_cuda and hw.device == str(dev) else contextlib.nullcontext():
                        out.append(model(x).float())
                out = [o.cpu() for o in out]
    finally:
        read.close()
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
