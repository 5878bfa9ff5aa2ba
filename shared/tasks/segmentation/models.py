"""Segmentation architectures by name, kept apart from the classification registry.

:data:`shared.models.MODEL_BUILDERS` promises (B, num_classes) logits, and model
files, configs and FedBN rely on that; a segmentation network returns a logit
map instead, so it gets its own registry and nothing in classification can pick
it up by accident.

Output convention: (B, n_labels, S, S) logits, one independent channel per task
label and **no background channel**. Task labels may overlap (the synthetic
cohort's ``nodule`` lies inside ``lung``), so each label is its own sigmoid
problem (see :mod:`shared.tasks.segmentation.dataset`); with sigmoids a background
channel would only be "no label here", which no metric or loss needs.

MONAI is imported inside the builders: it costs seconds to import and
classification processes never need it here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from shared.models import build_from


def _unet(
    n_labels: int,
    image_size: int,
    channels: Sequence[int] = (8, 16, 32),
    num_res_units: int = 1,
    **kwargs,
) -> nn.Module:
    """A small 2D MONAI UNet: (8, 16, 32) channels, stride-2 down-sampling, trains on a CPU in seconds."""
    from monai.networks.nets import UNet

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise ValueError(f"unet needs at least two channel levels, got {channels}")
    levels = 2 ** (len(channels) - 1)
    if image_size % levels:
        raise ValueError(
            f"unet: image_size {image_size} must be divisible by {levels} for {len(channels)} channel levels"
        )
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=n_labels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        **kwargs,
    )


SEG_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
}


def build_seg_model(name: str, n_labels: int, image_size: int, **kwargs) -> nn.Module:
    """Build segmentation architecture ``name``: (B, 1, S, S) images → (B, n_labels, S, S) per-label logits."""
    if name in SEG_MODEL_BUILDERS and n_labels < 1:
        raise ValueError(f"n_labels must be at least 1, got {n_labels}")
    return build_from(SEG_MODEL_BUILDERS, "segmentation architecture", name, n_labels, image_size, **kwargs)
