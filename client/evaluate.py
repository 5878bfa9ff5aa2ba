"""``fedrad-site evaluate``: any FedRad model (local or global) on this site's labelled images.

The model file carries its classes and preprocessing; the site's data is
scanned with exactly those parameters, so the numbers are comparable across
sites. The report folder (metrics, plots, per-case predictions) stays here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from client.report import write_report
from client.site_options import site_data_config
from shared.cli_support import progress_bar
from shared.config import ConfigError
from shared.metrics import evaluate_predictions
from shared.modelfile import load_model_file
from shared.site_data import load_site_dataset
from shared.tasks.classification.evaluation import predict_proba


def run_evaluate(
    model_path: Path, out_dir: Path, *, config: Path | None = None, data: Path | None = None,
    labels: Path | None = None, key: str | None = None, label_column: str | None = None,
    cache_dir: Path | None = None, n_bootstrap: int = 1000, show_progress: bool = True,
    console: Console | None = None, explain: int = 0,
) -> dict:
    """Evaluate and write the report; returns the metrics dict (also in OUT/metrics.json)."""
    loaded = load_model_file(model_path)
    cfg = site_data_config(
        config, data, labels, ",".join(loaded.classes) or None, key, label_column, loaded.preprocess.image_size,
        cache_dir, task=loaded.task,
    )
    if loaded.task == "segmentation":  # Dice/HD95 on the export's DICOM SEGs; labels.csv is not read
        from client.evaluate_segmentation import run_evaluate_segmentation

        return run_evaluate_segmentation(loaded, model_path, cfg, out_dir, n_bootstrap=n_bootstrap,
                                         console=console if show_progress else None)  # fmt: skip
    with progress_bar("Loading DICOM", enabled=show_progress) as update:
        dataset, check = load_site_dataset(cfg, on_progress=update)
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.data}: no labelled usable images to evaluate on (run 'fedrad-site check')")
    proba = predict_proba(loaded.model, dataset.images)
    y = dataset.labels.numpy()
    metrics = evaluate_predictions(y, proba, loaded.classes, threshold=loaded.threshold, n_bootstrap=n_bootstrap)
    metrics["model"] = {
        "file": str(model_path), "architecture": loaded.architecture, "weights_sha256": loaded.weights_sha256,
        "provenance": loaded.provenance,
    }
    metrics["data"] = {"images_usable": len(check.scan.usable), "images_rejected": len(check.scan.rejected),
                       "label_problems": len(check.join.problems)}
    figures = {}
    if explain > 0:
        from client.explain import grad_cam_figure

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        caption = f"Grad-CAM: where the model looked ({explain} confident correct case(s) per class, then its worst miss)"
        figures[caption] = grad_cam_figure(loaded.model, dataset.images, y, proba, loaded.classes, explain,
                                           Path(out_dir) / "explain-gradcam.png")  # fmt: skip
        metrics["explained_cases"] = explain
    write_report(
        out_dir, metrics, y, proba, loaded.classes, case_ids=dataset.paths, extra_figures=figures,
        model_info={"architecture": loaded.architecture, "classes": ", ".join(loaded.classes),
                    "weights sha256": loaded.weights_sha256, **{k: str(v) for k, v in loaded.provenance.items()}},
    )
    if show_progress and console is not None:
        _render(metrics, out_dir, console)
    return metrics


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


def _render(m: dict, out_dir: Path, console: Console) -> None:
    table = Table(title=f"Evaluation on {m.get('n', 0)} images", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("auc", "auc_ci95", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ece", "threshold"):
        if k in m:
            table.add_row(k, _fmt(m[k]))
    if "youden" in m:
        y = m["youden"]
        table.add_row("Youden threshold / sens / spec", f"{_fmt(y['threshold'])} / {_fmt(y['sensitivity'])} / {_fmt(y['specificity'])}")
    table.add_row("n per class", ", ".join(f"{k}: {v}" for k, v in m.get("n_per_class", {}).items()))
    console.print(table)
    for w in m.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"Report: {Path(out_dir) / 'report.html'} (per-case results; keep at the site)")
