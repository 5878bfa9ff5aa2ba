"""Export a FedRad model for clinical integration: TorchScript or ONNX, checked against the checkpoint.

The exported graph takes a float32 batch ``(N, 1, S, S)`` of images (``(N, 1, S, S, S)`` patches for
a 3D task: :meth:`shared.tasks.Task.input_shape`) already preprocessed the FedRad way (the model card says how) and returns what the
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


CHECK_VOLUMES = 2  # 3D inputs (a task's input_shape with three spatial axes): patches are large


def check_images(
    image_size: int, images: torch.Tensor | None = None, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The inputs an export is checked on: the caller's, else fixed-seed random ones of ``shape`` (one input's
    (C, *spatial), :meth:`shared.tasks.Task.input_shape`; default (1, S, S))."""
    if images is not None:
        return images[:CHECK_IMAGES].float()
    shape = tuple(shape or (1, image_size, image_size))
    g = torch.Generator().manual_seed(0)
    return torch.rand((CHECK_IMAGES if len(shape) <= 3 else CHECK_VOLUMES, *shape), generator=g)


def export_graph(
    model: torch.nn.Module,
    image_size: int,
    fmt: str,
    dest: Path,
    images: torch.Tensor | None = None,
    tolerance: float = 1e-5,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shape: tuple[int, ...] | None = None,
) -> float:
    """Write ``model`` as ``fmt`` to ``dest``; return the largest |probability gap| to the checkpoint.

    ``activation``: the task's (:meth:`shared.tasks.Task.probabilities`); default softmax over classes.
    ``shape``: one input's (C, *spatial) (:meth:`shared.tasks.Task.input_shape`); default (1, S, S)."""
    wrapped = _Probabilities(model, activation or (lambda logits: torch.softmax(logits, dim=1))).eval()
    x = check_images(image_size, images, shape)
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
