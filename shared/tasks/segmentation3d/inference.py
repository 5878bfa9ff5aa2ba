"""A whole volume's prediction: MONAI sliding-window inference over patch-sized windows, one case at a time.

The network was trained on cubic patches (``PatchSampling.patch_size``), so it sees the volume through
windows of that size: overlap 0.25 and Gaussian blending (a window's centre counts more than its edges,
where the network saw less context), as MONAI's and nnU-Net's defaults. A volume smaller than a window
along an axis is padded and cropped back by MONAI, so the output always has the volume's shape.

Memory: the case's image (float32) and its logits ((K + 1) × float32 per voxel) are the only whole-volume
arrays, for one case at a time: 210 MB for a 256 × 256 × 200 volume with three segments. Windows go to
the site's device in batches of :func:`shared.training.inference_batch_size` (at most
:data:`shared.training.INFERENCE_PIXELS` voxels: 16 windows of 64³, 4 of 96³), under mixed precision on
CUDA; the logits are gathered on the CPU, where metrics are computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from shared import hardware as hwmod
from shared.hardware import Hardware
from shared.tasks.segmentation3d.dataset import VolumeCases
from shared.training import inference_batch_size

OVERLAP = 0.25
WINDOWS_PER_BATCH = 16  # asked for; capped by inference_batch_size for large windows


def volume_logits(
    model: nn.Module, image: np.ndarray | torch.Tensor, patch_size: int, hardware: Hardware | None = None
) -> torch.Tensor:
    """(K + 1, D, H, W) float32 logits on the CPU for one (D, H, W) volume; eval mode, no gradients, the model's
    mode and place restored."""
    from monai.inferers import sliding_window_inference

    hw = hardware or hwmod.active()
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    roi = (int(patch_size),) * 3
    was_training = model.training
    model.eval()
    try:
        with hwmod.placed(model, hw, 5), torch.inference_mode():
            dev = hwmod.device_of(model)
            use_amp = dev.type == "cuda" and hw.is_cuda

            def predictor(window: torch.Tensor) -> torch.Tensor:
                with hwmod.autocast(hw) if use_amp else contextlib.nullcontext():
                    return model(window).float()

            out = sliding_window_inference(
                x,
                roi_size=roi,
                sw_batch_size=inference_batch_size(WINDOWS_PER_BATCH, roi),
                predictor=predictor,
                overlap=OVERLAP,
                mode="gaussian",
                sw_device=dev,
                device=torch.device("cpu"),
            )
    finally:
        model.train(was_training)
    return torch.as_tensor(out)[0].float()


def predict_volume(model: nn.Module, data: VolumeCases, i: int) -> np.ndarray:
    """Case ``i``'s predicted label map (D, H, W) uint8: the argmax over background and segments."""
    logits = volume_logits(model, data.read_image(i), data.sampling.patch_size)
    data.release(i)
    return logits.argmax(0).to(torch.uint8).numpy()


def iter_case_logits(model: nn.Module, data: VolumeCases) -> Iterator[tuple[int, torch.Tensor]]:
    """(case index, logits) for every case in turn; only one case's volumes are held at a time."""
    for i in range(len(data)):
        logits = volume_logits(model, data.read_image(i), data.sampling.patch_size)
        data.release(i)
        yield i, logits
