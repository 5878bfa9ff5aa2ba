"""The multi-label site report: metrics.json, one ROC per finding, an AUC chart, predictions.csv, one HTML page.

Same frame as classification's report (:mod:`shared.report_html`): the page
embeds its figures, says up front that it holds per-case results, and every
file is owner-only (0600, :mod:`shared.private_files`); the folder is 0700 when
this creates it. Plots use matplotlib's object API (no pyplot state).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from shared.metrics import roc_points
from shared.private_files import private_dir, private_file, write_private_text
from shared.report_html import DPI, _fmt_ci, _num, _rows_table, html_page

_WRITTEN = {1.0: "1", 0.0: "0", -1.0: "-1"}  # labels as the CSV writes them; blank = unknown


def write_multilabel_report(
    out_dir: Path,
    metrics: dict,
    values: np.ndarray,
    proba: np.ndarray,
    case_ids: list[str],
    model_info: dict | None = None,
    extra_figures: dict[str, Path] | None = None,
    title: str = "FedRad site evaluation (multi-label)",
) -> dict[str, Path]:
    """Write every report file into ``out_dir``; ``metrics`` is :func:`evaluate_findings` of ``values``/``proba``."""
    findings = list(metrics["findings"])
    v, p = np.asarray(values, dtype=float), np.asarray(proba, dtype=float)
    if v.shape != p.shape or v.shape != (len(case_ids), len(findings)):
        raise ValueError(f"values {v.shape}, proba {p.shape} and {len(case_ids)} case ids do not match {findings}")
    out_dir = private_dir(Path(out_dir))
    paths = {
        "metrics": out_dir / "metrics.json",
        "roc": out_dir / "roc-per-finding.png",
        "auc": out_dir / "auc-per-finding.png",
        "predictions": out_dir / "predictions.csv",
        "report": out_dir / "report.html",
    }
    write_private_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    _save(_roc_grid(v, p, metrics), paths["roc"])
    _save(_auc_chart(metrics), paths["auc"])
    _write_predictions(paths["predictions"], case_ids, v, p, metrics)
    images = {"roc": paths["roc"], "auc": paths["auc"]}
    captions = [
        "ROC per finding (certain labels only), with the operating point at its threshold",
        "AUC per finding with its 95% bootstrap interval; macro and micro AUC",
    ]
    for caption, path in (extra_figures or {}).items():  # Grad-CAM per finding (explain.py)
        images[caption], paths[caption] = path, path
        captions.append(caption)
    sections = f"<h2>Summary</h2>\n{_summary_table(metrics)}\n<h2>Per finding</h2>\n{_findings_table(metrics)}\n"
    footer = "Per-case probabilities: <code>predictions.csv</code> next to this file."
    page = html_page(title, sections, metrics.get("warnings", []), model_info or {}, images, captions, footer)
    write_private_text(paths["report"], page)
    return paths


def _save(fig: Figure, path: Path) -> None:
    with private_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)


def _roc_grid(v: np.ndarray, p: np.ndarray, m: dict) -> Figure:
    findings = m["findings"]
    cols = min(3, len(findings))
    rows = math.ceil(len(findings) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.5 * rows), layout="constrained")
    for i, f in enumerate(findings):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6")
        fig_f = m["per_finding"][f]
        if fig_f["auc"] is None:
            ax.text(0.5, 0.5, "ROC undefined:\none class only", ha="center", va="center", fontsize=9)
        else:
            certain = (v[:, i] == 1) | (v[:, i] == 0)
            fpr, tpr, _ = roc_points(v[certain, i] == 1, p[certain, i])
            ci = _fmt_ci(fig_f["auc_ci95"])
            ax.plot(fpr, tpr, lw=2, color="C0", label=f"AUC {fig_f['auc']:.3f}" + (f" ({ci})" if ci else ""))
            ax.plot(
                1 - fig_f["specificity"],
                fig_f["sensitivity"],
                "o",
                color="C3",
                label=f"threshold {fig_f['threshold']:.2f}",
            )
            ax.legend(loc="lower right", fontsize=7)
        ax.set_title(f"{f} (n+={fig_f['n_positive']}, n-={fig_f['n_negative']})", fontsize=9)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def _auc_chart(m: dict) -> Figure:
    names = [*m["findings"], "macro", "micro"]
    aucs = [m["per_finding"][f]["auc"] for f in m["findings"]] + [m["auc_macro"], m["auc_micro"]]
    cis = [m["per_finding"][f]["auc_ci95"] for f in m["findings"]] + [m["auc_macro_ci95"], m.get("auc_micro_ci95")]
    fig = Figure(figsize=(1.0 + 0.7 * len(names), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (a, ci) in enumerate(zip(aucs, cis, strict=True)):
        if a is None:
            continue
        err = None if ci is None else [[a - ci[0]], [ci[1] - a]]
        ax.bar(i, a, color="C1" if i >= len(m["findings"]) else "C0", yerr=err, capsize=4)
    ax.axhline(0.5, ls="--", lw=1, color="0.6")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="AUC", title="AUC per finding (95% CI)")
    return fig


def _write_predictions(path: Path, case_ids: list[str], v: np.ndarray, p: np.ndarray, m: dict) -> None:
    findings = m["findings"]
    thresholds = [m["per_finding"][f]["threshold"] for f in findings]
    with private_file(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", *(f"{kind}_{f}" for f in findings for kind in ("label", "p", "called"))])
        for cid, labels, probs in zip(case_ids, v, p, strict=True):
            cells = []
            for label, prob, thr in zip(labels, probs, thresholds, strict=True):
                cells += [_WRITTEN.get(float(label), ""), f"{prob:.6f}", int(prob >= thr)]
            w.writerow([cid, *cells])


def _summary_table(m: dict) -> str:
    rows = [
        ("Macro AUC (mean over findings)", _num(m.get("auc_macro"))),
        ("Macro AUC 95% CI", _fmt_ci(m.get("auc_macro_ci95")) or "n/a"),
        ("Micro AUC (all certain case-finding pairs)", _num(m.get("auc_micro"))),
        ("Micro AUC 95% CI", _fmt_ci(m.get("auc_micro_ci95")) or "n/a"),
        ("Cases", str(m.get("n", ""))),
        ("Certain labels (1 or 0)", str(m.get("n_certain_labels", ""))),
    ]
    return _rows_table(rows, escape=False, numeric=True)


def _findings_table(m: dict) -> str:
    import html

    head = (
        "<tr><th>finding</th><th>AUC</th><th>95% CI</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
        "<th>prevalence</th><th>positive</th><th>negative</th><th>uncertain</th><th>unknown</th></tr>"
    )
    body = []
    for f in m["findings"]:
        x = m["per_finding"][f]
        cells = [
            _num(x["auc"]),
            _fmt_ci(x["auc_ci95"]) or "n/a",
            _num(x["threshold"]),
            _num(x["sensitivity"]),
            _num(x["specificity"]),
            _num(x["prevalence"]),
            *(str(x[k]) for k in ("n_positive", "n_negative", "n_uncertain", "n_unknown")),
        ]
        body.append(f"<tr><th>{html.escape(f)}</th>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"
