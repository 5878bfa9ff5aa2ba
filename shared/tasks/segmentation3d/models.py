"""3D segmentation architectures by name, from MONAI: ``unet``, ``segresnet``, ``dynunet``.

Output convention: (B, K + 1, D, H, W) logits: channel 0 background, channel k segment ``labels[k - 1]``,
one softmax over the channels. Unlike the 2D task (independent sigmoid channels, because its labels
may overlap), a CT/MR label map gives every voxel exactly one class, so a softmax is the model of the
data and its argmax is the predicted label map.

``image_size`` is the side of the cubic training patch (and of the sliding window at inference). Every
architecture here halves the patch at each level, so the patch must divide by 2^(levels - 1); the
builders say so rather than fail inside a skip connection. The defaults are small (8 to 64 channels,
four levels; 0.15 M parameters for unet, 0.35 M dynunet, 1.2 M segresnet) so they train on a CPU in
tests and fit a site's GPU at 96-128³ patches; a consortium widens them with arch kwargs
(``channels``, ``init_filters``, ``filters``). Normalisation is instance or group norm, no BatchNorm:
batches of two patches are normal in 3D.

MONAI is imported inside the builders: it costs seconds and the outbound guard never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from shared.models import build_from


def _check_size(name: str, image_size: int, levels: int) -> None:
    factor = 2 ** (levels - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(
            f"{name}: the patch side (image_size) {image_size} must be a multiple of {factor} for {levels} levels"
        )


def _unet(
    n_labels: int,
    image_size: int,
    channels: Sequence[int] = (8, 16, 32, 64),
    num_res_units: int = 1,
    **kwargs,
) -> nn.Module:
    """MONAI's residual UNet in 3D (Kerfoot et al. 2018), stride-2 levels, instance norm."""
    from monai.networks.nets import UNet

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise ValueError(f"unet needs at least two channel levels, got {channels}")
    _check_size("unet", image_size, len(channels))
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=n_labels + 1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        **kwargs,
    )


def _segresnet(
    n_labels: int,
    image_size: int,
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] | None = None,
    **kwargs,
) -> nn.Module:
    """MONAI's SegResNet (Myronenko 2018, without the VAE branch): residual encoder, light decoder, group norm."""
    from monai.networks.nets import SegResNet

    blocks_down = tuple(int(b) for b in blocks_down)
    blocks_up = tuple(int(b) for b in blocks_up) if blocks_up is not None else (1,) * (len(blocks_down) - 1)
    _check_size("segresnet", image_size, len(blocks_down))
    return SegResNet(
        spatial_dims=3,
        init_filters=int(init_filters),
        in_channels=1,
        out_channels=n_labels + 1,
        blocks_down=blocks_down,
        blocks_up=blocks_up,
        **kwargs,
    )


def _dynunet(
    n_labels: int,
    image_size: int,
    filters: Sequence[int] = (8, 16, 32, 64),
    res_block: bool = True,
    **kwargs,
) -> nn.Module:
    """MONAI's DynUNet, the nnU-Net network: 3³ kernels, stride 2 below the first level, instance norm."""
    from monai.networks.nets import DynUNet

    filters = tuple(int(f) for f in filters)
    levels = len(filters)
    if levels < 2:
        raise ValueError(f"dynunet needs at least two levels, got filters {filters}")
    _check_size("dynunet", image_size, levels)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=n_labels + 1,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=filters,
        res_block=bool(res_block),
        **kwargs,
    )


SEG3D_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "segresnet": _segresnet,
    "dynunet": _dynunet,
}


def build_seg3d_model(name: str, n_labels: int, image_size: int, **kwargs) -> nn.Module:
    """Build ``name``: (B, 1, p, p, p) patches → (B, n_labels + 1, p, p, p) logits (background first)."""
    if name in SEG3D_MODEL_BUILDERS and n_labels < 1:
        raise ValueError(f"n_labels must be at least 1, got {n_labels}")
    return build_from(SEG3D_MODEL_BUILDERS, "3D segmentation architecture", name, n_labels, image_size, **kwargs)
