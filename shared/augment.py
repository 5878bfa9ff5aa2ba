"""Training-time augmentation for 2D X-ray batches, with one ``strength`` knob.

What it does per image (independently drawn for every image in the batch):
left-right flip (p = 0.5), rotation up to ±10°, zoom up to ±5 %, intensity
scale and shift jitter up to ±10 %, and additive Gaussian noise with a
standard deviation drawn up to 0.03. ``strength`` scales every range (and the
flip probability, capped at 0.5); 0 turns augmentation off. No vertical flips:
an upside-down chest film is not a realistic input.

Why plain batched torch and not MONAI here (measured on one CPU thread, 64×64,
batch 32, ``benchmarks/bench_training.py``): the per-sample MONAI
``Compose([RandFlip, RandRotate, RandScaleIntensity, RandShiftIntensity,
RandGaussianNoise])`` costs ~6–7 ms per image, 1.5× a whole training step of
the small CNN, so it would more than halve throughput. MONAI's batched
``networks.layers.AffineTransform`` runs as fast as the code below, but
importing it costs 4–9 s, paid by every federated message because Flower
starts a fresh ClientApp process per message (measured: ~60 % of a site's
import time). So flip, rotation and zoom are folded into one 2×3 matrix per
image, the sampling grid is built by broadcasting, and the whole batch is
resampled with a single ``F.grid_sample``; intensity jitter and noise are
fused vectorised ops. Total ≈ 4–6 % of a training step. Random numbers come
from the caller's ``torch.Generator`` so training is reproducible by seed; they
are drawn on the batch's device (the generator must be there too), so a batch
on the GPU is augmented on the GPU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from shared.augment_base import StrengthAugment

if TYPE_CHECKING:
    from shared.scanner_augment import ScannerAugment


class BatchAugment(StrengthAugment):
    """Randomly augment a (B, C, H, W) float batch; returns a new tensor, the input is untouched."""

    max_rotate_deg = 10.0
    max_zoom = 0.05
    max_scale = 0.10
    max_shift = 0.10
    max_noise_std = 0.03

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__(strength)
        self._coords: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _base(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre coordinates in [-1, 1] (align_corners=False), cached per image size and device."""
        if (h, w, device) not in self._coords:
            xs = ((torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1).view(1, 1, w)
            ys = ((torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1).view(1, h, 1)
            self._coords[(h, w, device)] = (xs.to(device), ys.to(device))
        return self._coords[(h, w, device)]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        s = self.strength
        b, _, h, w = x.shape
        # One draw for all per-image parameters: flip, angle, zoom, scale, shift, noise std.
        u = torch.rand(b, 6, generator=generator, dtype=torch.float32, device=x.device)
        flip = torch.where(u[:, 0] < min(0.5 * s, 0.5), -1.0, 1.0)
        angle = (2 * u[:, 1] - 1) * math.radians(self.max_rotate_deg * s)
        zoom = 1.0 + (2 * u[:, 2] - 1) * (self.max_zoom * s)
        cos = (torch.cos(angle) / zoom).view(b, 1, 1)
        sin = (torch.sin(angle) / zoom).view(b, 1, 1)
        f = flip.view(b, 1, 1)
        # Pull-back map about the image centre: input = R(angle)/zoom · diag(flip, 1) · output.
        xs, ys = self._base(h, w, x.device)
        grid = torch.stack((f * cos * xs - sin * ys, f * sin * xs + cos * ys), dim=-1)
        # Border padding repeats edge pixels instead of adding black corners the model could key on.
        out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)

        view = (b, 1, 1, 1)
        scale = (1.0 + (2 * u[:, 3] - 1) * (self.max_scale * s)).view(view).to(x.dtype)
        shift = ((2 * u[:, 4] - 1) * (self.max_shift * s)).view(view).to(x.dtype)
        std = (u[:, 5] * (self.max_noise_std * s)).view(view).to(x.dtype)
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return torch.addcmul(torch.addcmul(shift, out, scale), noise, std)


class ComposedAugment:
    """Scanner-appearance augmentation (:mod:`shared.scanner_augment`), then :class:`BatchAugment`."""

    def __init__(self, scanner: ScannerAugment, batch: BatchAugment) -> None:
        self.scanner, self.batch = scanner, batch

    @property
    def enabled(self) -> bool:
        return self.scanner.enabled or self.batch.enabled

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.batch(self.scanner(x, generator), generator)


def build_augment(strength: float, scanner: float = 0.0) -> BatchAugment | ComposedAugment:
    """The FedRad training augmentation at ``strength`` (1.0 = default ranges, 0 = off), with the
    scanner-appearance augmentation at ``scanner`` first when that is > 0."""
    batch = BatchAugment(strength)
    if not scanner > 0:
        return batch
    # Lazily, only for the import cost: it reads the ingest window from shared.config (pydantic), which plain
    # training does not load. scanner_augment never imports this module (its base is shared.augment_base).
    from shared.scanner_augment import ScannerAugment

    return ComposedAugment(ScannerAugment(scanner), batch)
