"""Grad-CAM overlays for ``fedrad-site evaluate --explain K``: where the model looked, K cases per class.

MONAI's :class:`monai.visualize.GradCAM` on the model's last convolution
(found by walking the modules, so SmallCNN, DenseNet121 and ResNet18 all
work). Cases are the K most confident correct predictions of each true class
(what the model has learned) plus, where there are any, the most confident
wrong one (where it fails). The figure stays in the site's report folder
with the rest of the per-case results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from shared.private_files import private_file


def last_conv_layer(model: torch.nn.Module) -> str:
    """Dotted name of the last ``Conv2d``: Grad-CAM's usual target (finest map that still sees the whole image)."""
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not names:
        raise ValueError("the model has no Conv2d layer; Grad-CAM needs one")
    return names[-1]


def grad_cam_maps(model: torch.nn.Module, images: torch.Tensor, output: int) -> np.ndarray:
    """(N, S, S) float32 Grad-CAM maps of output ``output`` for ``images`` (N, 1, S, S), each scaled to [0, 1]
    (MONAI's default normaliser); the model is left in eval mode."""
    from monai.visualize import GradCAM

    model = model.eval()
    cam = GradCAM(nn_module=model, target_layers=last_conv_layer(model))
    x = images.float().clone().requires_grad_(True)
    return cam(x, class_idx=int(output)).detach().numpy()[:, 0].astype(np.float32, copy=False)


def pick_cases(y: np.ndarray, proba: np.ndarray, k: int) -> list[tuple[int, str]]:
    """(case index, why) per class: the k most confident correct cases, then the most confident mistake."""
    picks: list[tuple[int, str]] = []
    pred = proba.argmax(1)
    for c in sorted(set(y.tolist())):
        right = np.flatnonzero((y == c) & (pred == c))
        wrong = np.flatnonzero((y == c) & (pred != c))
        picks += [(int(i), "correct") for i in right[np.argsort(-proba[right, c])][:k]]
        if len(wrong):
            picks.append((int(wrong[np.argmax(proba[wrong, pred[wrong]])]), "missed"))
    return picks


def grad_cam_figure(
    model: torch.nn.Module,
    images: torch.Tensor,
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    k: int,
    path: Path,
) -> Path:
    """Write a grid of image | Grad-CAM overlay for the chosen cases to ``path`` (PNG)."""
    picks = pick_cases(y, proba, k)
    if not picks:
        raise ValueError("no cases to explain")
    index = [i for i, _ in picks]
    maps = grad_cam_maps(model, images[index], len(classes) - 1)  # evidence for the positive class
    fig = Figure(figsize=(4.2, 2.1 * len(picks)), layout="constrained")
    for row, ((i, why), heat) in enumerate(zip(picks, maps, strict=True)):
        img = images[i, 0].numpy()
        title = f"true {classes[y[i]]}, P({classes[-1]}) = {proba[i, -1]:.2f} ({why})"
        ax = fig.add_subplot(len(picks), 2, 2 * row + 1)
        ax.imshow(img, cmap="gray")
        ax.set_title(title, fontsize=7, loc="left")
        ax.axis("off")
        ax = fig.add_subplot(len(picks), 2, 2 * row + 2)
        ax.imshow(img, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"Grad-CAM for {classes[-1]}", fontsize=7, loc="left")
        ax.axis("off")
    with private_file(path, "wb") as fh:  # patients' images: owner-only like the rest of the report
        fig.savefig(fh, format="png", dpi=100)
    return path
