"""Classification at a site: AUC with its interval, sensitivity/specificity, calibration, Grad-CAM, the report.

What ``fedrad-site evaluate`` does with a classification model file. The report
folder (metrics, plots, per-case predictions) stays at the site.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.cli_support import progress_bar
from shared.config import ConfigError, SiteDataConfig
from shared.metrics import evaluate_predictions
from shared.modelfile import LoadedModel
from shared.private_files import private_dir
from shared.site_data import load_site_dataset
from shared.tasks.classification.evaluation import predict_proba
from shared.tasks.classification.report import write_report


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
) -> dict:
    """Evaluate ``loaded`` on the site's labelled images; write the report; return the metrics dict."""
    with progress_bar("Loading DICOM", enabled=show_progress) as update:
        dataset, check = load_site_dataset(cfg, on_progress=update)
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.data}: no labelled usable images to evaluate on (run 'fedrad-site check')")
    proba = predict_proba(loaded.model, dataset.images)
    y = dataset.labels.numpy()
    metrics = evaluate_predictions(y, proba, loaded.classes, threshold=loaded.threshold, n_bootstrap=n_bootstrap)
    metrics["model"] = {
        "file": str(model_path),
        "architecture": loaded.architecture,
        "weights_sha256": loaded.weights_sha256,
        "provenance": loaded.provenance,
    }
    metrics["data"] = {
        "images_usable": len(check.scan.usable),
        "images_rejected": len(check.scan.rejected),
        "label_problems": len(check.join.problems),
    }
    figures = {}
    if explain > 0:
        from shared.tasks.classification.explain import grad_cam_figure

        private_dir(Path(out_dir))
        caption = (
            f"Grad-CAM: where the model looked ({explain} confident correct case(s) per class, then its worst miss)"
        )
        figures[caption] = grad_cam_figure(
            loaded.model, dataset.images, y, proba, loaded.classes, explain, Path(out_dir) / "explain-gradcam.png"
        )
        metrics["explained_cases"] = explain
    write_report(
        out_dir,
        metrics,
        y,
        proba,
        loaded.classes,
        case_ids=dataset.paths,
        extra_figures=figures,
        model_info={
            "architecture": loaded.architecture,
            "classes": ", ".join(loaded.classes),
            "weights sha256": loaded.weights_sha256,
            **{k: str(v) for k, v in loaded.provenance.items()},
        },
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
        table.add_row(
            "Youden threshold / sens / spec",
            f"{_fmt(y['threshold'])} / {_fmt(y['sensitivity'])} / {_fmt(y['specificity'])}",
        )
    table.add_row("n per class", ", ".join(f"{k}: {v}" for k, v in m.get("n_per_class", {}).items()))
    console.print(table)
    for w in m.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"Report: {Path(out_dir) / 'report.html'} (per-case results; keep at the site)")
