"""``fedrad-site evaluate`` with a multi-label model file: every finding's figures on this site's labelled images.

The export is scanned with the model's preprocessing, the label CSV read for
the model's findings (:mod:`shared.tasks.multilabel.data`); the figures are
those of :func:`shared.tasks.multilabel.evaluation.evaluate_findings` at the
model's per-finding thresholds. The report folder stays at the site.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.cli_support import progress_bar
from shared.config import ConfigError, SiteDataConfig
from shared.modelfile import LoadedModel
from shared.private_files import private_dir
from shared.tasks.multilabel.data import load_multilabel_site
from shared.tasks.multilabel.dataset import predict_proba
from shared.tasks.multilabel.evaluation import evaluate_findings
from shared.tasks.multilabel.report import write_multilabel_report


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
        data, check = load_multilabel_site(cfg, loaded.outputs, on_progress=update)
    if len(data) == 0:
        raise ConfigError(
            f"{cfg.data}: no usable image has a label for the findings {loaded.outputs} in {cfg.labels} "
            "(run 'fedrad-site check' with findings set in site.yaml)"
        )
    proba = predict_proba(loaded.model, data.images)
    values = data.values.numpy()
    metrics = evaluate_findings(values, proba, data.findings, loaded.threshold, n_bootstrap)
    metrics["model"] = {
        "file": str(model_path),
        "architecture": loaded.architecture,
        "weights_sha256": loaded.weights_sha256,
        "provenance": loaded.provenance,
        "trained_with": loaded.task_options,
    }
    metrics["data"] = {
        "images_usable": len(check.scan.usable),
        "images_rejected": len(check.scan.rejected),
        "label_problems": len(check.join.problems),
    }
    figures = {}
    if explain > 0:
        from shared.tasks.multilabel.explain import grad_cam_per_finding

        private_dir(Path(out_dir))
        caption = f"Grad-CAM per finding: its {explain} most confident positive case(s), then its worst missed one"
        figures[caption] = grad_cam_per_finding(
            loaded.model, data.images, values, proba, data.findings, explain, Path(out_dir) / "explain-gradcam.png"
        )
        metrics["explained_cases"] = explain
    write_multilabel_report(
        out_dir,
        metrics,
        values,
        proba,
        data.paths,
        model_info={
            "architecture": loaded.architecture,
            "findings": ", ".join(data.findings),
            "weights sha256": loaded.weights_sha256,
            **{k: str(v) for k, v in loaded.provenance.items()},
        },
        extra_figures=figures,
    )
    if show_progress and console is not None:
        render_findings(metrics, out_dir, console)
    return metrics


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render_findings(m: dict, out_dir: Path, console: Console) -> None:
    """Per finding AUC [95 % CI], sensitivity/specificity at its threshold, prevalence and counts, as a table."""
    table = Table(
        title=f"Multi-label evaluation on {m['n']} images: macro AUC {_f(m['auc_macro'])}, micro AUC {_f(m['auc_micro'])}",
        title_justify="left",
    )
    for col in ("finding", "AUC", "95% CI", "threshold", "sens", "spec", "prevalence", "+ / - / ? / blank"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for f, x in m["per_finding"].items():
        ci = x["auc_ci95"]
        table.add_row(
            f,
            _f(x["auc"]),
            "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
            _f(x["threshold"]),
            _f(x["sensitivity"]),
            _f(x["specificity"]),
            _f(x["prevalence"]),
            f"{x['n_positive']} / {x['n_negative']} / {x['n_uncertain']} / {x['n_unknown']}",
        )
    console.print(table)
    for w in m.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"Report: {Path(out_dir) / 'report.html'} (per-case results; keep at the site)")
