"""The site's segmentation evaluation report: metrics.json, an overlay figure, predictions.csv, one HTML page.

The segmentation counterpart of :mod:`shared.tasks.classification.report` (same page, same
keep-at-the-site rule): Dice and HD95 per label with bootstrap CIs, and an
overlay PNG of a few cases (the image with reference and predicted contours)
so a radiologist can see what the numbers mean. The cases shown span the Dice
range (worst, middle, best), not only successes. HD95 is in millimetres for cases
whose image has a pixel spacing and in model-input pixels for the others, in
separate rows and columns (never one mean over both). Every file is written
owner-only (0600, :mod:`shared.private_files`): they are per-case results.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from shared.private_files import private_dir, private_file, write_private_text
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
        ax.imshow(np.asarray(images[i, 0]), cmap="gray", vmin=0, vmax=1)  # an array, a tensor or packed images
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
    """Write metrics.json, overlays.png, predictions.csv (per-case Dice/HD95) and report.html; returns {kind: path}.

    predictions.csv has ``hd95_mm_<label>`` and ``hd95_px_<label>`` columns; each case fills the one of its unit.
    """
    out_dir = private_dir(Path(out_dir))
    paths = {
        "metrics": out_dir / "metrics.json",
        "overlays": out_dir / "overlays.png",
        "predictions": out_dir / "predictions.csv",
        "report": out_dir / "report.html",
    }
    write_private_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    cases = overlay_cases(result.dice, n_overlay)
    with private_file(paths["overlays"], "wb") as fh:
        overlay_figure(images, pred, ref, result.labels, result.dice, cases, case_ids).savefig(
            fh, format="png", dpi=DPI
        )
    hd_mm, hd_px = result.hd95_in("mm"), result.hd95_in("px")
    with private_file(paths["predictions"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "case",
                *(f"dice_{x}" for x in result.labels),
                *(f"hd95_mm_{x}" for x in result.labels),
                *(f"hd95_px_{x}" for x in result.labels),
            ]
        )
        for i, case in enumerate(case_ids):
            hd = ["" if np.isnan(v) else f"{v:.3f}" for v in (*hd_mm[i], *hd_px[i])]
            w.writerow([case, *(f"{v:.4f}" for v in result.dice[i]), *hd])
    caption = f"{len(cases)} case(s) across the Dice range, worst first: reference (solid) vs prediction (dashed)"
    footer = (
        "Per-case Dice and HD95 (<code>hd95_mm_*</code> in millimetres, <code>hd95_px_*</code> in pixels for images "
        "without a pixel spacing): <code>predictions.csv</code> next to this file."
    )
    page = html_page(
        title,
        _sections(metrics, result),
        metrics.get("warnings", []),
        model_info,
        {"overlays": paths["overlays"]},
        [caption],
        footer,
    )
    write_private_text(paths["report"], page)
    return paths


def _sections(metrics: dict, result: SegMetrics) -> str:
    rows = [("Cases", str(result.n_cases)), ("Mean Dice over labels", _num(result.mean_dice))]
    n_px = int((~result.in_mm).sum())
    if n_px:
        rows.append(("Cases without a pixel spacing (HD95 in pixels)", str(n_px)))
    for name, s in result.per_label.items():
        rows.append((f"{name}: Dice (95% CI)", f"{_num(s.dice_mean)} ({_fmt_ci(s.dice_ci95) or 'n/a'})"))
        for unit, mean, ci, n in (
            ("millimetres", s.hd95_mm_mean, s.hd95_mm_ci95, s.n_hd95_mm),
            ("pixels, images without a pixel spacing", s.hd95_px_mean, s.hd95_px_ci95, s.n_hd95_px),
        ):
            if n or unit == "millimetres":
                rows.append((f"{name}: HD95, {unit} (95% CI)", f"{_num(mean)} ({_fmt_ci(ci) or 'n/a'}), {n} case(s)"))
        rows.append(
            (
                f"{name}: both empty / false positive / false negative",
                f"{s.n_both_empty} / {s.n_false_positive} / {s.n_false_negative}",
            )
        )
    data = metrics.get("data", {})
    seg_rows = [(k.replace("_", " "), str(v)) for k, v in data.items()]
    return f"<h2>Metrics</h2>\n{_rows_table(rows, numeric=True)}\n<h2>Images and SEGs</h2>\n{_rows_table(seg_rows, numeric=True)}\n"
