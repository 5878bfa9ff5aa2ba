"""The site's evaluation report: metrics.json, three plots, predictions.csv and one self-contained HTML page.

The HTML embeds its images as base64 data URIs, so it is a single file a
clinician can open from a USB stick or attach to an e-mail inside the hospital.
``metrics.json`` holds only aggregate figures; ``predictions.csv`` and the HTML
hold per-case results and must stay at the site, which the page says up front;
every file is written owner-only (0600, :mod:`shared.private_files`), the folder
0700 when this creates it.

Plots use matplotlib's object API (``Figure``) rather than pyplot: it renders
through the Agg canvas with no display, keeps no global figure registry to leak,
and does not switch the backend of a process that imports this module.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from shared.metrics import DEFAULT_THRESHOLD, calibration_bins, roc_points
from shared.private_files import private_dir, private_file, write_private_text
from shared.report_html import DPI, _fmt_ci, _num, _rows_table, html_page


def write_report(
    out_dir: Path,
    metrics: dict,
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    case_ids: list[str] | None = None,
    title: str = "FedRad site evaluation",
    model_info: dict | None = None,
    extra_figures: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Write every report file into ``out_dir`` (created if needed); returns {kind: path}.

    ``metrics`` is the output of :func:`shared.metrics.evaluate_predictions` for the
    same ``y_true``/``proba``; the plots mark its operating and Youden points.
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape != (y.size, len(classes)):
        raise ValueError(f"proba must have shape ({y.size}, {len(classes)}) for classes {classes}, got {p.shape}")
    if case_ids is None:
        case_ids = [f"case-{i + 1:05d}" for i in range(y.size)]
    if len(case_ids) != y.size:
        raise ValueError(f"got {len(case_ids)} case ids for {y.size} cases")
    out_dir = private_dir(Path(out_dir))

    paths = {
        "metrics": out_dir / "metrics.json",
        "roc": out_dir / "roc.png",
        "calibration": out_dir / "calibration.png",
        "confusion": out_dir / "confusion.png",
        "predictions": out_dir / "predictions.csv",
        "report": out_dir / "report.html",
    }
    write_private_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    _save(_roc_figure(y, p, classes, metrics), paths["roc"])
    _save(_calibration_figure(y, p, classes, metrics), paths["calibration"])
    _save(_confusion_figure(metrics, classes), paths["confusion"])
    _write_predictions(paths["predictions"], case_ids, y, p, classes, metrics)
    images = {k: paths[k] for k in ("roc", "calibration", "confusion")}
    captions = ["ROC curve", "Calibration (reliability diagram and histogram)", "Confusion matrix"]
    for caption, path in (
        extra_figures or {}
    ).items():  # e.g. Grad-CAM overlays (shared/tasks/classification/explain.py)
        images[caption], paths[caption] = path, path
        captions.append(caption)
    write_private_text(paths["report"], _html(title, metrics, classes, model_info or {}, images, captions))
    return paths


def predicted_labels(proba: np.ndarray, metrics: dict) -> np.ndarray:
    """Class index per case as the metrics define it: binary at the operating threshold, else argmax."""
    p = np.asarray(proba, dtype=float)
    if p.shape[1] == 2:
        thr = metrics.get("threshold")
        return (p[:, 1] >= (DEFAULT_THRESHOLD if thr is None else thr)).astype(int)
    return p.argmax(axis=1)


# --- plots ----------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    with private_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)


def _roc_figure(y: np.ndarray, p: np.ndarray, classes: list[str], m: dict) -> Figure:
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    ci = _fmt_ci(m.get("auc_ci95"))
    if m.get("auc") is None:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center", fontsize=12)
        ax.set_title("ROC")
    elif len(classes) == 2:
        fpr, tpr, _ = roc_points(y == 1, p[:, 1])
        ax.plot(fpr, tpr, lw=2, color="C0", label=f"AUC {m['auc']:.3f}{' (95% CI ' + ci + ')' if ci else ''}")
        if m.get("sensitivity") is not None and m.get("specificity") is not None:
            ax.plot(
                1 - m["specificity"],
                m["sensitivity"],
                "o",
                ms=9,
                color="C3",
                label=f"operating point (threshold {m['threshold']:.3g})",
            )
        yd = m.get("youden")
        if yd:
            ax.plot(
                1 - yd["specificity"],
                yd["sensitivity"],
                "D",
                ms=7,
                mfc="none",
                mew=2,
                color="C2",
                label=f"Youden point (threshold {yd['threshold']:.3g})",
            )
        ax.set_title(f"ROC: {classes[1]} vs {classes[0]}")
    else:
        for k, c in enumerate(classes):
            auc_k = m.get("per_class_auc", {}).get(c)
            if auc_k is None:
                continue
            fpr, tpr, _ = roc_points(y == k, p[:, k])
            ax.plot(fpr, tpr, lw=1.5, label=f"{c} vs rest: AUC {auc_k:.3f}")
        ax.set_title(f"ROC one-vs-rest, macro AUC {m['auc']:.3f}" + (f"\n95% CI {ci}" if ci else ""))
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="Sensitivity (true positive rate)",
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _calibration_figure(y: np.ndarray, p: np.ndarray, classes: list[str], m: dict) -> Figure:
    if len(classes) == 2:
        outcome, prob = (y == 1), p[:, 1]
        xlabel, ylabel = f"Predicted probability of {classes[1]}", f"Observed fraction {classes[1]}"
    else:
        outcome, prob = (p.argmax(axis=1) == y), p.max(axis=1)
        xlabel, ylabel = "Confidence (highest class probability)", "Observed accuracy"
    bins = calibration_bins(outcome, prob, n_bins=10)
    fig = Figure(figsize=(5.2, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    top.plot([b["mean_pred"] for b in filled], [b["frac_pos"] for b in filled], "o-", color="C0", label="model")
    top.set(ylim=(-0.02, 1.02), ylabel=ylabel, title=f"Reliability diagram (ECE {m.get('ece', float('nan')):.3f})")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    lo = [b["bin_lo"] for b in bins]
    bottom.bar(
        lo,
        [b["count"] for b in bins],
        width=[b["bin_hi"] - b["bin_lo"] for b in bins],
        align="edge",
        color="C0",
        alpha=0.6,
        edgecolor="white",
    )
    bottom.set(xlim=(0, 1), xlabel=xlabel, ylabel="Cases")
    return fig


def _confusion_figure(m: dict, classes: list[str]) -> Figure:
    cm = np.asarray(m["confusion"], dtype=int)
    n_classes = len(classes)
    side = 3.2 + 0.6 * n_classes
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    row = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, row, out=np.zeros(cm.shape), where=row > 0)
    dark = cm > 0.6 * max(int(cm.max()), 1)
    for i in range(n_classes):
        for j in range(n_classes):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{pct[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=11,
                color="white" if dark[i, j] else "black",
            )
    ax.set(xticks=range(n_classes), yticks=range(n_classes), xlabel="Predicted", ylabel="True")
    ax.set_xticklabels(classes, rotation=30 if n_classes > 3 else 0, ha="right" if n_classes > 3 else "center")
    ax.set_yticklabels(classes)
    sub = f" at threshold {m['threshold']:.3g}" if n_classes == 2 and m.get("threshold") is not None else ""
    ax.set_title(f"Confusion matrix{sub}\n(count, % of true class)", fontsize=10)
    return fig


# --- per-case table -------------------------------------------------------------------------------


def _write_predictions(path: Path, case_ids, y, p, classes, metrics) -> None:
    pred = predicted_labels(p, metrics)
    with private_file(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "true_label", *[f"p_{c}" for c in classes], "predicted_label"])
        for cid, t, probs, k in zip(case_ids, y, p, pred):
            w.writerow([cid, classes[t], *[f"{v:.6f}" for v in probs], classes[k]])


# --- HTML -----------------------------------------------------------------------------------------


def _html(
    title: str, m: dict, classes: list[str], model_info: dict, images: dict[str, Path], captions: list[str]
) -> str:
    sections = f"""<h2>Metrics</h2>
{_metrics_table(m, classes)}
<h2>Cases per class</h2>
{_counts_table(m, classes)}
"""
    footer = "Per-case predictions: <code>predictions.csv</code> next to this file."
    return html_page(title, sections, m.get("warnings", []), model_info, images, captions, footer)


def _metrics_table(m: dict, classes: list[str]) -> str:
    rows = [
        ("AUC" + (" (macro one-vs-rest)" if len(classes) > 2 else ""), _num(m.get("auc"))),
        ("AUC 95% CI (stratified bootstrap)", _fmt_ci(m.get("auc_ci95")) or "n/a"),
    ]
    if len(classes) == 2:
        rows += [
            ("Positive class", html.escape(str(m.get("positive_class", classes[1])))),
            ("Operating threshold", _num(m.get("threshold"))),
            ("Sensitivity", _num(m.get("sensitivity"))),
            ("Specificity", _num(m.get("specificity"))),
        ]
        yd = m.get("youden")
        if yd:
            rows.append(
                (
                    "Youden point",
                    f"threshold {_num(yd['threshold'])}, sensitivity {_num(yd['sensitivity'])}, "
                    f"specificity {_num(yd['specificity'])}, J {_num(yd['j'])}",
                )
            )
    else:
        for c, a in (m.get("per_class_auc") or {}).items():
            rows.append((f"AUC {c} vs rest", _num(a)))
    rows += [
        ("Accuracy", _num(m.get("accuracy"))),
        ("Balanced accuracy", _num(m.get("balanced_accuracy"))),
        ("Expected calibration error (10 bins)", _num(m.get("ece"))),
        ("Cases", str(m.get("n", ""))),
    ]
    return _rows_table(rows, escape=False, numeric=True)


def _counts_table(m: dict, classes: list[str]) -> str:
    per_class = m.get("n_per_class", {})
    rows = [(c, str(per_class.get(c, ""))) for c in classes] + [("total", str(m.get("n", "")))]
    return _rows_table(rows, numeric=True)
