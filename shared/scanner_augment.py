"""Scanner-appearance augmentation: make each training image look as if another scanner had taken it.

Why: a site's model only ever sees its own scanner fleet, and the unseen hospital's films differ in
ways the geometric and brightness jitter of :mod:`shared.augment` does not cover: a different
processing curve, a different noise level and sharpness, an uneven exposure (heel effect, bias
field) and collimator borders. Randomising those at training time ("domain randomisation", cf.
BigAug, Zhang et al., IEEE TMI 2020) teaches the model to ignore them. It runs at each site on its
own images; nothing is shared.

Half of the images (``p``) are re-imaged, the rest keep their own scanner's look: re-imaging every
image made the faint-nodule task too hard to pick up within a matched budget (pooled, strong shift,
15 epochs: one seed in three never left chance). On a re-imaged image, each effect is drawn
independently, with every range scaled by ``strength`` (0 = off):

* smooth multiplicative exposure field: a linear gradient in a random direction plus a radial
  term, up to ±25 % (like MONAI's ``RandBiasField``, batched; see :mod:`shared.augment`
  on why per-sample MONAI transforms are too slow here);
* collimator borders (p = 0.3): unexposed, bright strips up to 8 % of the side on each edge;
* Gaussian blur up to σ = 1 pixel;
* a processing curve: gamma in [e^-0.4, e^0.4], then (p = 0.5) an S-shaped LUT of gain up to 6;
* additive noise up to σ = 0.04;
* then the same robust per-image percentile window that ingest applies
  (:func:`shared.imaging.planar.percentile_window`), so augmented images have the value
  range the model sees at inference.

It works best under the histogram-equalisation input layer (``smallcnn-eq``, :mod:`shared.intensity`):
equalisation removes the scanner's contrast curve exactly but is thrown by what it cannot remove
(collimator borders, exposure fields, noise), and this augmentation teaches the model those. Measured
in ``fedrad-bench generalization --equalize-lever --scanner-augment-lever 1.0`` (docs/generalization.md).

Batched torch, random numbers from the caller's generator (reproducible by seed); about 12 ms per
batch of 32 at 64×64 on one thread.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shared.augment_base import StrengthAugment
from shared.config import PreprocessConfig

_WINDOW = PreprocessConfig.model_fields
WINDOW_PCT = (float(_WINDOW["window_low_pct"].default), float(_WINDOW["window_high_pct"].default))


class ScannerAugment(StrengthAugment):
    """Randomly re-image a (B, 1, H, W) batch in [0, 1] as another scanner would; returns a new tensor."""

    name = "scanner augmentation"
    max_bias = 0.25
    collimation_p = 0.3
    max_collimation = 0.08
    max_blur_px = 1.0
    max_log_gamma = 0.4
    sigmoid_p = 0.5
    max_sigmoid_gain = 6.0
    max_noise_std = 0.04
    blur_radius = 3
    p = 0.5  # fraction of images re-imaged; the rest stay as the site's scanner made them

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        s = self.strength
        b, c, h, w = x.shape
        if c != 1:
            raise ValueError(f"scanner augmentation re-images grey-scale X-rays: expected 1 channel, got {c}")
        dev = x.device  # random numbers and constants on the batch's device (the generator's too)
        u = torch.rand(b, 17, generator=generator, dtype=torch.float32, device=dev)
        ys = torch.linspace(-1, 1, h, device=dev).view(1, 1, h, 1)
        xs = torch.linspace(-1, 1, w, device=dev).view(1, 1, 1, w)
        col = lambda i: u[:, i].view(b, 1, 1, 1)  # noqa: E731 - one uniform per image, broadcastable

        # Uneven exposure: linear gradient in a random direction plus a radial term about a random centre.
        theta = col(0) * (2 * math.pi)
        ramp = torch.cos(theta) * xs + torch.sin(theta) * ys
        radial = (xs - (2 * col(1) - 1) * 0.5) ** 2 + (ys - (2 * col(2) - 1) * 0.5) ** 2
        field = 0.5 * ramp + (2 * col(3) - 1) * (radial - radial.mean(dim=(2, 3), keepdim=True))
        field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        out = x * (1 + col(4) * (self.max_bias * s) * field)

        # Collimator borders: outside the exposed rectangle the detector records no attenuation (bright).
        margin = u[:, 5:9] * min(self.max_collimation * s, 0.3)  # left, right, top, bottom
        inside = (
            (xs >= -1 + 2 * margin[:, 0].view(b, 1, 1, 1))
            & (xs <= 1 - 2 * margin[:, 1].view(b, 1, 1, 1))
            & (ys >= -1 + 2 * margin[:, 2].view(b, 1, 1, 1))
            & (ys <= 1 - 2 * margin[:, 3].view(b, 1, 1, 1))
        )
        collimate = col(9) < min(self.collimation_p * s, 1.0)
        bright = out.amax(dim=(2, 3), keepdim=True)
        out = torch.where(collimate & ~inside, bright, out)

        # Detector / scatter blur: one separable Gaussian per image (grouped convolution over the batch).
        sigma = (u[:, 10] * (self.max_blur_px * s)).clamp_min(1e-3).view(b, 1)
        taps = torch.arange(-self.blur_radius, self.blur_radius + 1, dtype=torch.float32, device=dev).view(1, -1)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)
        r = self.blur_radius
        flat = F.pad(out.view(1, b, h, w), (r, r, r, r), mode="replicate")
        flat = F.conv2d(flat, kernel.view(b, 1, 1, -1), groups=b)
        flat = F.conv2d(flat, kernel.view(b, 1, -1, 1), groups=b)
        out = flat.view(b, 1, h, w)

        # Processing curve: a gamma, then on some images an S-shaped LUT, both monotone on [0, 1].
        lo, hi = out.amin(dim=(2, 3), keepdim=True), out.amax(dim=(2, 3), keepdim=True)
        out = (out - lo) / (hi - lo).clamp_min(1e-6)
        gamma = torch.exp((2 * col(11) - 1) * (self.max_log_gamma * s))
        out = out.clamp_min(0) ** gamma
        gain = (col(12) * (self.max_sigmoid_gain * s)).clamp_min(1e-3)
        mid = 0.35 + 0.3 * col(13)
        lo, hi = torch.sigmoid(-gain * mid), torch.sigmoid(gain * (1 - mid))
        s_curve = (torch.sigmoid(gain * (out - mid)) - lo) / (hi - lo)
        out = torch.where(col(14) < min(self.sigmoid_p * s, 1.0), s_curve, out)

        # Quantum / electronic noise, then the ingest window so the value range is the inference one.
        std = col(15) * (self.max_noise_std * s)
        out = out + torch.randn(out.shape, generator=generator, dtype=out.dtype, device=dev) * std
        return torch.where(col(16) < self.p, _rewindow(out), x)


def _rewindow(x: torch.Tensor) -> torch.Tensor:
    """Per-image robust percentile window to [0, 1], as ingest does (flat images become 0).

    Nearest-rank percentiles (``kthvalue``): a third of the cost of ``torch.quantile``'s full sort."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    n = flat.shape[1]
    k_lo = min(n, max(1, round(WINDOW_PCT[0] / 100 * (n - 1)) + 1))
    k_hi = min(n, max(1, round(WINDOW_PCT[1] / 100 * (n - 1)) + 1))
    lo, hi = flat.kthvalue(k_lo, dim=1).values, flat.kthvalue(k_hi, dim=1).values
    span = (hi - lo).view(b, 1, 1, 1)
    out = (x - lo.view(b, 1, 1, 1)) / span.clamp_min(1e-6)
    return torch.where(span > 1e-6, out.clamp(0, 1), torch.zeros_like(out))
