"""Per-image differential privacy: DP-SGD local training and its privacy accounting.

What it guarantees: the weights a site sends are (ε, δ)-differentially private
with respect to any *one image* of the site's training set being added or
removed. Each step draws a Poisson sample of the site's images (each image
with probability ``q = batch_size / n``), clips each image's gradient to
``clipping_norm`` (L2) and adds Gaussian noise of standard deviation
``noise_multiplier × clipping_norm`` to their sum. Opacus computes the
per-image gradients and the noisy step (``GradSampleModule``, ``DPOptimizer``);
Flower's ``RdpAccountant`` with Poisson sampling composes the steps into ε.

This protects each patient far better than client-level DP
(:mod:`server.strategies.dp`), which hides a whole hospital and needs hundreds
of sites before its noise is affordable. A patient with k images in the
training set is protected at group level: ε grows to about k·ε for them.

Requirements: a model without BatchNorm (``smallcnn-gn``; BatchNorm mixes the
images of a batch, so no gradient belongs to one image) and no in-place
activations (Opacus' hooks forbid them). The loss is per image and weighted by
its class weight, never normalised by the batch: each image's clipped gradient
then depends on that image alone.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from torch import nn

from shared import hardware as hwmod
from shared.hardware import Hardware
from shared.tasks.base import TaskDataset
from shared.training import TrainConfig, seed_everything, task_of

MAX_NOISE_MULTIPLIER = 1000.0
# Integer Rényi orders: dp-accounting's fractional orders below 2 fail to converge at these sampling rates
# (and say so on every call); integer orders are exact and lose nothing measurable at ε of a few.
RDP_ORDERS = tuple(float(o) for o in (*range(2, 64), 80, 96, 128, 192, 256, 512))


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling probability of each image per step (the expected batch is ``batch_size``)."""
    return min(1.0, batch_size / max(1, n))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Steps that make one epoch in expectation: 1 / q, as Opacus' Poisson data loader counts them."""
    return max(1, round(1.0 / sample_rate(n, batch_size)))


def image_accountant(n: int, delta: float) -> RdpAccountant:
    """An RDP accountant for Poisson-sampled steps over a training set of ``n`` images."""
    return RdpAccountant(
        PrivacyConfig(delta, n, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.POISSON), orders=RDP_ORDERS
    )


def step_event(noise_multiplier: float, n: int, batch_size: int) -> GaussianPrivacyEvent:
    """One DP-SGD step: a Gaussian release over a Poisson sample of expected size ``min(batch_size, n)``."""
    return GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=min(batch_size, n), population_size=n)


def epsilon_of(runs: Sequence[tuple[float, int]], n: int, batch_size: int, delta: float) -> float:
    """ε after DP-SGD on ``n`` images, composed over ``(noise multiplier, steps)`` runs; 0 for none."""
    acc = image_accountant(n, delta)
    for noise_multiplier, steps in runs:
        acc.compose(step_event(noise_multiplier, n, batch_size), steps)
    return acc.get_epsilon(delta) if acc.num_releases else 0.0


def epsilon_after(noise_multiplier: float, n: int, batch_size: int, steps: int, delta: float) -> float:
    """ε after ``steps`` DP-SGD steps on ``n`` images at ``noise_multiplier``."""
    return epsilon_of([(noise_multiplier, steps)], n, batch_size, delta)


def noise_for_epsilon(target_epsilon: float, n: int, batch_size: int, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.5 %) whose ε after ``steps`` steps is at most ``target_epsilon``."""
    if not target_epsilon > 0 or steps < 1:
        raise ValueError(f"need target_epsilon > 0 and steps >= 1, got {target_epsilon} and {steps}")
    low, high = 0.05, 1.0
    while epsilon_after(high, n, batch_size, steps, delta) > target_epsilon:
        low, high = high, high * 2
        if high > MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches ε {target_epsilon} in {steps} steps"
            )
    while high / low > 1.005:
        mid = math.sqrt(low * high)
        if epsilon_after(mid, n, batch_size, steps, delta) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def dp_sgd_problems(model: nn.Module) -> list[str]:
    """Why Opacus cannot train ``model`` privately (BatchNorm and the like); empty when it can."""
    from opacus.validators import ModuleValidator

    return [str(e) for e in ModuleValidator.validate(model, strict=False)]


LAYERS = ("all", "head")


def _private_part(model: nn.Module, layers: str) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(the module DP-SGD trains, the frozen part's forward before it; identity for ``all``).

    ``head``: only the classifier trains; the feature extractor is frozen in eval mode (its BatchNorm uses
    the statistics it came with and never updates them, so nothing of this site's images enters it).
    """
    if layers == "all":
        problems = dp_sgd_problems(model)
        if problems:
            raise ValueError(
                f"per-image DP cannot train this model: {'; '.join(problems)} "
                "(use task.model: smallcnn-gn, or privacy.dp.layers: head)"
            )
        return model, lambda x: x
    if layers != "head":
        raise ValueError(f"privacy.dp.layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    if not all(hasattr(model, a) for a in ("features", "pool", "classifier")):
        raise ValueError(f"privacy.dp.layers head needs a smallcnn-family model, not {type(model).__name__}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)

    @torch.no_grad()
    def frozen(x: torch.Tensor) -> torch.Tensor:
        return model.pool(model.features(x)).flatten(1)

    return model.classifier, frozen


def train_model_private(
    model: nn.Module,
    data: TaskDataset,
    cfg: TrainConfig,
    noise_multiplier: float,
    clipping_norm: float,
    on_batch: Callable[[int, int], None] | None = None,
    layers: str = "all",
    hardware: Hardware | None = None,
) -> list[dict]:
    """DP-SGD: train ``model`` in place for ``cfg.epochs`` × :func:`steps_per_epoch` Poisson-sampled steps.

    ``layers``: ``all`` (a BatchNorm-free model) or ``head`` (only the classifier of a pretrained
    feature extractor, which stays frozen: the usual way to fine-tune under DP from a public model).
    Returns one history dict per epoch (``epoch``, ``loss``, ``train_acc``,
    ``images_per_s``) like :func:`shared.training.train_model`, on ``hardware``
    (default :func:`shared.hardware.active`; float32, the model back on the CPU after). FedProx's
    proximal term is not applied: its gradient is not per image. A step whose
    Poisson sample is empty (probability about e^-batch_size) is skipped.
    """
    n = len(data)
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    hw = hardware or hwmod.active()
    with hwmod.placed(model, hw, data.images.ndim):  # float32 on the device: Opacus' per-image gradients, no autocast
        return _train_private(model, data, cfg, noise_multiplier, clipping_norm, on_batch, layers, hw)


def _train_private(
    model: nn.Module,
    data: TaskDataset,
    cfg: TrainConfig,
    noise_multiplier: float,
    clipping_norm: float,
    on_batch: Callable[[int, int], None] | None,
    layers: str,
    hw: Hardware,
) -> list[dict]:
    """:func:`train_model_private` with the model already on ``hw``'s device."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    trained, frozen = _private_part(model, layers)
    n = len(data)
    seed_everything(cfg.seed, deterministic=not hw.is_cuda)
    gen = torch.Generator().manual_seed(cfg.seed)  # the Poisson samples: always drawn on the CPU
    aug_gen = torch.Generator(hw.torch_device).manual_seed(cfg.seed) if hw.is_cuda else gen
    task = task_of(data)
    per_image_loss = task.per_image_loss(data, cfg.class_weighted)
    if per_image_loss is None:
        raise ValueError(task.unsupported("image-dp") or f"{task.name} has no per-image loss for DP-SGD")
    augment = task.augment(cfg.augment, cfg.scanner_augment)
    images, targets = data.images, task.targets(data)
    private = GradSampleModule(trained, loss_reduction="mean")
    bs = min(cfg.batch_size, n)
    optimizer = DPOptimizer(
        torch.optim.AdamW(private.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clipping_norm,
        expected_batch_size=bs,
        loss_reduction="mean",
    )
    q, steps = sample_rate(n, bs), steps_per_epoch(n, bs)
    history: list[dict] = []
    # The images need no gradient, so torch notes that the first layer's full backward hook sees outputs only:
    # that is how Opacus works, not a fault.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    try:
        for epoch in range(1, cfg.epochs + 1):
            private.train()  # head: only the classifier (Opacus records activations in training mode only)
            loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
            for step in range(steps):
                idx = torch.nonzero(torch.rand(n, generator=gen) < q).flatten()
                if len(idx) == 0:
                    continue
                x, y = images[idx], targets[idx]
                if hw.is_cuda:
                    x, y = hwmod.to_device(x, hw.torch_device), hwmod.to_device(y, hw.torch_device)
                x, y = augment(x, y, aug_gen)
                logits = private(frozen(x))
                per_image = per_image_loss(logits, y)
                optimizer.zero_grad(set_to_none=True)
                per_image.mean().backward()  # GradSampleModule undoes the mean: each image's own weighted gradient
                optimizer.step()
                loss_sum += float(per_image.detach().sum())
                right = task.correct(logits, y)
                correct += int(right) if right is not None else 0
                seen += len(idx)
                if on_batch is not None:
                    on_batch((epoch - 1) * steps + step + 1, cfg.epochs * steps)
            elapsed = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / max(1, seen),
                    "train_acc": correct / max(1, seen),
                    "images_per_s": seen / elapsed if elapsed > 0 else float("inf"),
                }
            )
    finally:
        private.to_standard_module()  # removes Opacus' hooks: the plain model goes on (evaluated, sent, saved)
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    return history
