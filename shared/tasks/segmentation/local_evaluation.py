"""``fedrad-site evaluate`` with a segmentation model file: Dice/HD95 per label on this site's DICOM SEGs.

:func:`client.evaluate.run_evaluate` asks the model file's task for this. The site's export is scanned with the model's
preprocessing, the SEG masks are aligned to it (:mod:`shared.tasks.segmentation.data`),
and every image with a usable SEG is a case. The report (metrics, overlays,
per-case Dice) stays at the site (:mod:`shared.tasks.segmentation.report`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.config import ConfigError, SiteDataConfig
from shared.modelfile import LoadedModel
from shared.tasks.segmentation.dataset import predict_masks
from shared.tasks.segmentation.metrics import evaluate_segmentation
from shared.tasks.segmentation.report import write_seg_report


def evaluate_local(
    loaded: LoadedModel,
    model_path: Path,
    cfg: SiteDataConfig,
    out_dir: Path,
    *,
    n_bootstrap: int = 1000,
    show_progress: bool = True,
    console: Console | None = None,
    explain: int = 0,
    n_overlay: int = 4,
) -> dict:
    """Evaluate ``loaded`` on the site's SEG-labelled images; write the report; return the metrics dict."""
    from shared.tasks.segmentation.data import load_seg_dataset

    cfg.image_size = loaded.preprocess.image_size
    data, seg = load_seg_dataset(cfg, loaded.labels)
    if len(data) == 0:
        raise ConfigError(
            f"{cfg.data}: no image has a usable DICOM SEG with segments {loaded.labels} ({len(seg.problems)} SEG "
            f"problem(s)); run `fedrad-site check --data {cfg.data} --segments {','.join(loaded.labels)}`"
        )
    pred = predict_masks(loaded.model, data.images)
    result = evaluate_segmentation(pred, data.masks, loaded.labels, n_bootstrap=n_bootstrap, spacing=data.spacing)
    metrics = {"task": "segmentation", **result.to_json()}
    metrics["model"] = {
        "file": str(model_path),
        "architecture": loaded.architecture,
        "weights_sha256": loaded.weights_sha256,
        "provenance": loaded.provenance,
    }
    metrics["data"] = {"images_with_seg": len(data), "seg_problems": len(seg.problems)}
    uids = list(seg.masks)
    case_ids = (
        [seg.image_paths.get(u, u) for u in uids]
        if len(uids) == len(data)
        else [f"case-{i + 1:05d}" for i in range(len(data))]
    )
    write_seg_report(
        out_dir,
        metrics,
        result,
        data.images,  # the overlay reads its few cases only
        pred.numpy(),
        data.masks.numpy(),
        case_ids,
        {
            "architecture": loaded.architecture,
            "labels": ", ".join(loaded.labels),
            "weights sha256": loaded.weights_sha256,
            **{k: str(v) for k, v in loaded.provenance.items()},
        },
        n_overlay=n_overlay,
    )
    if show_progress and console is not None:
        render_seg_metrics(metrics, out_dir, console)
    return metrics


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"


def render_seg_metrics(m: dict, out_dir: Path, console: Console) -> None:
    """Dice and HD95 per label with their 95 % CIs, as a rich table; HD95 in mm, and in pixels for cases without
    a pixel spacing (a column only when there are such cases: the two units are never averaged together)."""
    table = Table(
        title=f"Segmentation evaluation on {m['n_cases']} images (mean Dice {m['mean_dice']:.3f})", title_justify="left"
    )
    units = ["mm", *(["px"] if m.get("n_cases_without_spacing") else [])]
    columns = ["label", "Dice", "Dice 95% CI"]
    for unit in units:
        columns += [f"HD95 ({unit})", f"HD95 {unit} 95% CI", f"HD95 {unit} cases"]
    for name in (*columns, "FP / FN"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for label, s in m["per_label"].items():
        row = [label, f"{s['dice_mean']:.3f}", _ci(s["dice_ci95"])]
        for unit in units:
            mean = s[f"hd95_{unit}_mean"]
            row += ["n/a" if mean is None else f"{mean:.2f}", _ci(s[f"hd95_{unit}_ci95"]), str(s[f"n_hd95_{unit}"])]
        table.add_row(*row, f"{s['n_false_positive']} / {s['n_false_negative']}")
    console.print(table)
    if m.get("n_cases_without_spacing"):
        console.print(
            f"{m['n_cases_without_spacing']} image(s) have no PixelSpacing/ImagerPixelSpacing: their HD95 is in "
            "pixels of the model input (HD95 px), apart from the millimetre figures."
        )
    console.print(f"Report: {Path(out_dir) / 'report.html'} (per-case results and overlays; keep at the site)")
