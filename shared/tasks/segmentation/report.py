"""The site's segmentation evaluation report: metrics.json, an overlay figure, predictions.csv, one HTML page.

The segmentation counterpart of :mod:`shared.tasks.classification.report` (same page, same
keep-at-the-site rule): Dice and HD95 per label with bootstrap CIs, and an
overlay PNG of a few cases (the image with reference and predicted contours)
so a radiologist can see what the numbers mean. The cases shown span the Dice
range (worst, middle, best), not only successes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from shared.report_html import DPI, _fmt_ci, _num, _rows_table, html_page
from shared.tasks.segmentation.metrics import SegMetrics

COLORS = ("tab:red", "tab:cyan", "tab:orange", "tab:green", "tab:purple", "tab:olive")


def overlay_cases(dice: np.ndarray, k: int) -> list[int]:
    """``k`` case indices spread over the mean-Dice range, worst first (all cases if there are fewer)."""
    order = np.argsort(dice.mean(axis=1), kind="stable")
    if len(order) <= k:
        return order.tolist()
    return [int(order[round(i * (len(order) - 1) / (k - 1))]) for i in range(k)] if k > 1 else [int(order[0])]


def overlay_figure(
    images: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray,
    labels: list[str],
    dice: np.ndarray,
    cases: list[int],
    case_ids: list[str],
) -> Figure:
    """One panel per case: the image, reference contours (solid) and predicted contours (dashed) per label."""
    fig = Figure(figsize=(3.0 * len(cases), 3.6), layout="constrained")
    for j, i in enumerate(cases):
        ax = fig.add_subplot(1, len(cases), j + 1)
        ax.imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        for k in range(len(labels)):
            color = COLORS[k % len(COLORS)]
            for mask, style in ((ref[i, k], "solid"), (pred[i, k], "dashed")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)
        scores = ", ".join(f"{name} {dice[i, k]:.2f}" for k, name in enumerate(labels))
        ax.set_title(f"{case_ids[i]}\nDice {scores}", fontsize=7)
        ax.set_axis_off()
    legend = "; ".join(f"{name}: {COLORS[k % len(COLORS)].removeprefix('tab:')}" for k, name in enumerate(labels))
    fig.suptitle(f"reference solid, prediction dashed ({legend})", fontsize=8)
    return fig


def write_seg_report(
    out_dir: Path,
    metrics: dict,
    result: SegMetrics,
    images: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray,
    case_ids: list[str],
    model_info: dict,
    n_overlay: int = 4,
    title: str = "FedRad site evaluation: segmentation",
) -> dict[str, Path]:
    """Write metrics.json, overlays.png, predictions.csv (per-case Dice/HD95) and report.html; returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / "metrics.json",
        "overlays": out_dir / "overlays.png",
        "predictions": out_dir / "predictions.csv",
        "report": out_dir / "report.html",
    }
    paths["metrics"].write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    cases = overlay_cases(result.dice, n_overlay)
    overlay_figure(images, pred, ref, result.labels, result.dice, cases, case_ids).savefig(
        paths["overlays"], format="png", dpi=DPI
    )
    with open(paths["predictions"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", *(f"dice_{x}" for x in result.labels), *(f"hd95_{x}" for x in result.labels)])
        for i, case in enumerate(case_ids):
            hd = ["" if np.isnan(v) else f"{v:.3f}" for v in result.hd95[i]]
            w.writerow([case, *(f"{v:.4f}" for v in result.dice[i]), *hd])
    caption = f"{len(cases)} case(s) across the Dice range, worst first: reference (solid) vs prediction (dashed)"
    footer = "Per-case Dice and HD95: <code>predictions.csv</code> next to this file."
    page = html_page(
        title,
        _sections(metrics, result),
        metrics.get("warnings", []),
        model_info,
        {"overlays": paths["overlays"]},
        [caption],
        footer,
    )
    paths["report"].write_text(page, encoding="utf-8")
    return paths


def _sections(metrics: dict, result: SegMetrics) -> str:
    unit = result.hd95_unit
    rows = [("Cases", str(result.n_cases)), ("Mean Dice over labels", _num(result.mean_dice))]
    for name, s in result.per_label.items():
        rows += [
            (f"{name}: Dice (95% CI)", f"{_num(s.dice_mean)} ({_fmt_ci(s.dice_ci95) or 'n/a'})"),
            (
                f"{name}: HD95, {unit}s (95% CI)",
                f"{_num(s.hd95_mean)} ({_fmt_ci(s.hd95_ci95) or 'n/a'}), {s.n_hd95} case(s)",
            ),
            (
                f"{name}: both empty / false positive / false negative",
                f"{s.n_both_empty} / {s.n_false_positive} / {s.n_false_negative}",
            ),
        ]
    data = metrics.get("data", {})
    seg_rows = [(k.replace("_", " "), str(v)) for k, v in data.items()]
    return f"<h2>Metrics</h2>\n{_rows_table(rows, numeric=True)}\n<h2>Images and SEGs</h2>\n{_rows_table(seg_rows, numeric=True)}\n"
