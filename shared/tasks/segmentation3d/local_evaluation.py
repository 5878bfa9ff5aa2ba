"""``fedrad-site evaluate`` with a 3D segmentation model file: Dice/HD95 per label on the site's volumes.

:func:`evaluate_local` loads the site's cases through the task's one data hook
(:func:`shared.tasks.segmentation3d.site.load_volume_cases`) at the model's patch size, and
:func:`evaluate_volumes` (which tests call directly) scores them and writes the report folder
(:mod:`shared.tasks.segmentation3d.report`), which stays at the site. The montage cases are predicted
again rather than kept from the scoring pass: three more inferences cost less memory than holding
every case's slices until the median is known.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from shared.tasks.segmentation3d.dataset import VolumeCases
from shared.tasks.segmentation3d.evaluation import evaluate_cases
from shared.tasks.segmentation3d.inference import predict_volume
from shared.tasks.segmentation3d.report import CaseView, case_view, montage_cases, write_seg3d_report


def evaluate_volumes(
    model: nn.Module,
    data: VolumeCases,
    out_dir: Path,
    *,
    model_info: dict | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Score ``model`` on every case of ``data``, write the report into ``out_dir``, return the metrics dict."""
    if len(data) == 0:
        raise ValueError("no cases to evaluate")
    evaluation = evaluate_cases(model, data)
    result = evaluation.summary(data.labels, n_bootstrap, seed)
    metrics: dict[str, Any] = {"task": "segmentation3d", **result.to_json(), "loss": evaluation.loss}
    metrics["data"] = {
        "cases": len(data),
        "patch_size": data.sampling.patch_size,
        "spacings_mm": sorted({"×".join(f"{v:g}" for v in s) for s in data.spacing}),
    }
    if model_info:
        metrics["model"] = model_info
    views = [_view(model, data, i, role, result.dice[i]) for i, role in montage_cases(result.dice)]
    write_seg3d_report(out_dir, metrics, result, data.case_ids, views, model_info or {})
    return metrics


def _view(model: nn.Module, data: VolumeCases, i: int, role: str, dice: np.ndarray) -> CaseView:
    """A montage case's slices: its volumes read (and released) once more, predicted again."""
    pred = predict_volume(model, data, i)
    view = case_view(data.case_ids[i], role, data.read_image(i), data.read_labels(i), pred, dice, data.spacing[i])
    data.release(i)
    return view


def evaluate_local(
    loaded: Any,
    model_path: Path,
    cfg: Any,
    out_dir: Path,
    *,
    n_bootstrap: int = 1000,
    show_progress: bool = True,
    console: Any = None,
    explain: int = 0,
) -> dict:
    """:meth:`shared.tasks.Task.evaluate_local` for 3D segmentation (``loaded``: a ``LoadedModel``)."""
    from shared.config import ConfigError
    from shared.tasks.segmentation3d.site import load_volume_cases

    size = int(loaded.preprocess.image_size)
    cfg.image_size = size
    options = dict(getattr(loaded, "task_options", None) or {})  # the spacing and window it was trained at
    data = load_volume_cases(
        cfg, list(loaded.labels), spacing=options.get("spacing", "1.5"), window=options.get("window", "soft_tissue")
    )
    if len(data) == 0:
        raise ConfigError(f"{cfg.data}: no volume has a label map with segments {loaded.labels}")
    data = replace(data, sampling=replace(data.sampling, patch_size=size))
    info = {
        "file": str(model_path),
        "architecture": loaded.architecture,
        "labels": ", ".join(loaded.labels),
        "sha256": loaded.weights_sha256,
        "provenance": loaded.provenance,
    }
    metrics = evaluate_volumes(loaded.model, data, out_dir, model_info=info, n_bootstrap=n_bootstrap)
    if show_progress and console is not None:
        console.print(
            f"3D segmentation on {metrics['n_cases']} volumes: mean Dice {metrics['mean_dice']:.3f}; "
            + "; ".join(
                f"{k} Dice {s['dice_mean']:.3f}"
                + (f", HD95 {s['hd95_mm_mean']:.1f} mm" if s["hd95_mm_mean"] is not None else "")
                for k, s in metrics["per_label"].items()
            )
        )
        console.print(f"Report: {Path(out_dir) / 'report.html'} (per-case results and montages; keep at the site)")
    return metrics
