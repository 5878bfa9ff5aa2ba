"""Per-image histogram equalisation as a network's first layer: an intensity lever against scanner shift.

Why it helps: much of what makes one scanner's films look unlike another's is the processing curve (gamma,
sigmoid LUT, window), a monotone map of intensities. A pixel's rank within its own image is unchanged by any
monotone map, so replacing every pixel by the fraction of its image's pixels at or below it removes that part
of the shift exactly, at every site and at sites that never trained, with no statistics shared between sites.
It does not undo noise, blur, bias fields or anatomy differences.

Why in the model and not in preprocessing: then the model file carries it, so training, evaluation,
fine-tuning, cross-site evaluation and the TorchScript export all apply it identically and the tensor cache
stays the same. It has no parameters or buffers, so state dicts, FedBN's local layers and aggregation are
unchanged. Measured in the generalization benchmark (``--equalize-lever``).
"""

from __future__ import annotations

import torch
from torch import nn


class HistogramEqualize(nn.Module):
    """(B, C, H, W) → same shape in (0, 1]: each value becomes the fraction of its image channel's values ≤ it.

    Ties (e.g. a clipped background) map to one value, so flat regions stay flat.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2).contiguous()  # (B, C, H·W)
        ordered = flat.sort(dim=-1).values
        at_or_below = torch.searchsorted(ordered, flat, right=True)
        return (at_or_below.to(x.dtype) / flat.shape[-1]).view_as(x)
