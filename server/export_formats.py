"""Export a FedRad model for clinical integration: TorchScript or ONNX, checked against the checkpoint.

The exported graph takes a float32 batch ``(N, 1, S, S)`` of images already
preprocessed the FedRad way (the model card says how) and returns what the
model's task calls probabilities (:meth:`shared.tasks.Task.probabilities`:
softmax over classes, a sigmoid map per segment label), so an integrator
needs no FedRad code to run it.
Before a file is handed out, its outputs are compared with the checkpoint's on
``CHECK_IMAGES`` images (a fixed-seed batch, or the caller's test images):
the largest gap must stay within ``tolerance`` (default 1e-5), else the file is
deleted and the export fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FORMATS = ("pt", "torchscript", "onnx")
CHECK_IMAGES = 16


class _Probabilities(torch.nn.Module):
    """The model followed by its task's output activation: what a viewer or PACS plug-in wants."""

    def __init__(self, model: torch.nn.Module, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model.eval()
        self.activation = activation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.activation(self.model(images))


def check_images(image_size: int, images: torch.Tensor | None = None) -> torch.Tensor:
    if images is not None:
        return images[:CHECK_IMAGES].float()
    g = torch.Generator().manual_seed(0)
    return torch.rand((CHECK_IMAGES, 1, image_size, image_size), generator=g)


def export_graph(
    model: torch.nn.Module,
    image_size: int,
    fmt: str,
    dest: Path,
    images: torch.Tensor | None = None,
    tolerance: float = 1e-5,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Write ``model`` as ``fmt`` to ``dest``; return the largest |probability gap| to the checkpoint.

    ``activation``: the task's (:meth:`shared.tasks.Task.probabilities`); default softmax over classes."""
    wrapped = _Probabilities(model, activation or (lambda logits: torch.softmax(logits, dim=1))).eval()
    x = check_images(image_size, images)
    with torch.no_grad():
        expected = wrapped(x).numpy()
    dest = Path(dest)
    if fmt == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(wrapped, x[:1])
        scripted.save(str(dest))
        got = torch.jit.load(str(dest))(x).detach().numpy()
    elif fmt == "onnx":
        import logging
        import warnings

        import onnxruntime

        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (x[:1],),
                str(dest),
                input_names=["images"],
                output_names=["probabilities"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
                dynamo=True,
                verbose=False,
            )
        session = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x.numpy()})[0]
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    gap = float(np.abs(got - expected).max())
    if not gap <= tolerance:
        dest.unlink(missing_ok=True)
        raise ArithmeticError(f"{fmt} export differs from the checkpoint by {gap:.2e} > {tolerance:g}; nothing written")
    return gap
