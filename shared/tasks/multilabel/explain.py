"""Grad-CAM per finding for ``fedrad-site evaluate --explain K``: where the model looked for each finding.

For every finding, the K certain positives the model is most confident about
and, where there is one, the positive it missed worst; each overlay is the
Grad-CAM of that finding's own output (MONAI's :class:`monai.visualize.GradCAM`
on the last convolution, found as classification finds it). The figure stays
in the site's report folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from shared.private_files import private_file
from shared.tasks.classification.explain import last_conv_layer


def pick_positives(values: np.ndarray, proba: np.ndarray, k: int) -> list[tuple[int, int, str]]:
    """(case, finding index, why): per finding its k most confident certain positives, then its worst missed one."""
    picks = []
    for j in range(values.shape[1]):
        pos = np.flatnonzero(values[:, j] == 1)
        if not pos.size:
            continue
        order = pos[np.argsort(-proba[pos, j])]
        picks += [(int(i), j, "found") for i in order[:k]]
        if order.size > k and proba[order[-1], j] < 0.5:
            picks.append((int(order[-1]), j, "missed"))
    return picks


def grad_cam_per_finding(
    model: torch.nn.Module,
    images: torch.Tensor,
    values: np.ndarray,
    proba: np.ndarray,
    findings: list[str],
    k: int,
    path: Path,
) -> Path:
    """Write a grid of image | Grad-CAM of the finding's output for the chosen cases to ``path`` (PNG)."""
    from monai.visualize import GradCAM

    picks = pick_positives(values, proba, k)
    if not picks:
        raise ValueError("no certain positive case of any finding to explain")
    model = model.eval()
    cam = GradCAM(nn_module=model, target_layers=last_conv_layer(model))
    fig = Figure(figsize=(4.2, 2.1 * len(picks)), layout="constrained")
    for row, (i, j, why) in enumerate(picks):
        x = images[i : i + 1].float().clone().requires_grad_(True)
        heat = cam(x, class_idx=j).detach().numpy()[0, 0]
        img = images[i, 0].numpy()
        ax = fig.add_subplot(len(picks), 2, 2 * row + 1)
        ax.imshow(img, cmap="gray")
        ax.set_title(f"{findings[j]} positive, P = {proba[i, j]:.2f} ({why})", fontsize=7, loc="left")
        ax.axis("off")
        ax = fig.add_subplot(len(picks), 2, 2 * row + 2)
        ax.imshow(img, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"Grad-CAM for {findings[j]}", fontsize=7, loc="left")
        ax.axis("off")
    with private_file(path, "wb") as fh:  # patients' images: owner-only like the rest of the report
        fig.savefig(fh, format="png", dpi=100)
    return path
