"""Training augmentation for 3D patches: intensity only (scale, shift, noise), never a flip.

Why no flips: the volumes are canonical (axis 0 Superior, 1 Posterior, 2 Left), and left/right is
anatomy: a flipped abdomen puts the liver on the left, which no scanner produces, and a model that
learns "either side" cannot tell a left kidney label from a right one. Flips along the other axes
produce patients upside down or back to front. Rotations and elastic deformations are anatomically
plausible but resample every patch on the CPU (costly per step, and they blur thin structures); they
are left out until measured worth it.

What varies between sites and scanners after windowing is intensity: the window's mapping, contrast
phase, noise level. So per patch: intensity × U(1 ± 0.1·s), + U(± 0.1·s), + Gaussian noise of
σ = 0.02·s (``s`` the strength, TrainConfig.augment), clipped back to [0, 1]. Label patches pass
unchanged. Drawn from the loop's generator on the batch's device, in one call per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SCALE, SHIFT, NOISE = 0.1, 0.1, 0.02  # at strength 1


def intensity_augment(
    strength: float,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """``augment(x, y, generator) -> (x, y)`` for (B, 1, p, p, p) patches; identity at strength 0."""
    s = float(strength)
    if s <= 0:
        return lambda x, y, gen: (x, y)

    def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        u = torch.rand((2, *shape), generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        out = x * (1 + SCALE * s * u[0]) + SHIFT * s * u[1] + NOISE * s * noise
        return out.clamp_(0.0, 1.0), y

    return augment
