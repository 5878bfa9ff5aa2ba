"""The site's 3D segmentation report: metrics.json, predictions.csv, axial and coronal montages, one HTML page.

The 3D counterpart of :mod:`shared.tasks.segmentation.report` (same page from
:func:`shared.report_html.html_page`, same keep-at-the-site rule, every file owner-only): per-label Dice and
HD95 (mm) with bootstrap CIs and how many cases had HD95 undefined, and two montages a radiologist can
read: for the cases of lowest, median and highest mean Dice, the axial and the coronal slice through the
reference's largest extent, the image in grey with the reference (solid) and predicted (dashed) contours
of each segment in its own colour. Slices are shown the radiological way for canonical volumes (axis 0
Superior, 1 Posterior, 2 Left): the patient's right on the image's left, anterior (axial) and superior
(coronal) at the top, with the voxel spacing as the aspect ratio.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from shared.private_files import private_dir, private_file, write_private_text
from shared.report_html import DPI, _fmt_ci, _num, _rows_table, html_page
from shared.tasks.segmentation3d.metrics import Seg3DMetrics

COLORS = ("tab:red", "tab:cyan", "tab:orange", "tab:green", "tab:purple", "tab:olive")
VIEWS = ("axial", "coronal")


def montage_cases(dice: np.ndarray) -> list[tuple[int, str]]:
    """(case, role) for the cases of lowest, median and highest mean Dice, in that order; a case that is
    several of them (fewer than three cases) once, with its roles joined."""
    order = np.argsort(dice.mean(axis=1), kind="stable")
    roles: dict[int, list[str]] = {}
    for role, i in (("lowest", order[0]), ("median", order[(len(order) - 1) // 2]), ("highest", order[-1])):
        roles.setdefault(int(i), []).append(role)
    return [(i, "/".join(r)) for i, r in roles.items()]


@dataclass
class CaseView:
    """What a montage shows of one case: its two slices through the image, reference and prediction."""

    case_id: str
    role: str  # which of the montage's cases: lowest, median, highest (mean Dice)
    dice: np.ndarray  # (K,)
    spacing: tuple[float, float, float]
    slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # view → (image, reference, prediction) 2D


def case_view(
    case_id: str,
    role: str,
    image: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    dice: np.ndarray,
    spacing: tuple[float, float, float],
) -> CaseView:
    """The axial and coronal slices of a (D, H, W) case through the reference's (else the prediction's) widest
    extent; the middle of the volume when both are empty."""
    fg = ref if ref.any() else pred
    z = int(np.argmax((fg > 0).sum(axis=(1, 2)))) if fg.any() else image.shape[0] // 2
    y = int(np.argmax((fg > 0).sum(axis=(0, 2)))) if fg.any() else image.shape[1] // 2
    return CaseView(
        case_id=case_id,
        role=role,
        dice=np.asarray(dice),
        spacing=spacing,
        slices={
            "axial": (image[z], ref[z], pred[z]),
            "coronal": (image[:, y, :], ref[:, y, :], pred[:, y, :]),
        },
    )


def montage_figure(view: str, cases: list[CaseView], labels: list[str]) -> Figure:
    """One panel per case in ``view``: the slice in grey, reference contours solid, prediction dashed."""
    fig = Figure(figsize=(3.2 * len(cases), 3.8), layout="constrained")
    for j, case in enumerate(cases):
        image, ref, pred = case.slices[view]
        ax = fig.add_subplot(1, len(cases), j + 1)
        # axial rows are axis 1 (posterior downwards), coronal rows axis 0 (superior upwards: origin lower)
        row_mm = case.spacing[1] if view == "axial" else case.spacing[0]
        origin = "upper" if view == "axial" else "lower"
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, origin=origin, aspect=row_mm / case.spacing[2])
        for k in range(len(labels)):
            color = COLORS[k % len(COLORS)]
            for mask, style in ((ref == k + 1, "solid"), (pred == k + 1, "dashed")):
                if mask.any():
                    # contour's default origin puts Z[0, 0] at (0, 0), as imshow does in either orientation
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)
        scores = ", ".join(f"{name} {case.dice[k]:.2f}" for k, name in enumerate(labels))
        ax.set_title(f"{case.role} mean Dice: {case.case_id}\nDice {scores}", fontsize=7)
        ax.set_axis_off()
    legend = "; ".join(f"{name}: {COLORS[k % len(COLORS)].removeprefix('tab:')}" for k, name in enumerate(labels))
    fig.suptitle(f"{view}: reference solid, prediction dashed ({legend}); patient's right on the left", fontsize=8)
    return fig


def write_seg3d_report(
    out_dir: Path,
    metrics: dict,
    result: Seg3DMetrics,
    case_ids: list[str],
    views: list[CaseView],
    model_info: dict,
    title: str = "FedRad site evaluation: 3D segmentation",
) -> dict[str, Path]:
    """Write metrics.json, predictions.csv (per-case Dice and HD95 in mm), the montages and report.html;
    returns {kind: path}. ``views``: the montage cases (:func:`montage_cases`, :func:`case_view`)."""
    out_dir = private_dir(Path(out_dir))
    paths = {
        "metrics": out_dir / "metrics.json",
        "predictions": out_dir / "predictions.csv",
        **{f"montage-{v}": out_dir / f"montage-{v}.png" for v in VIEWS},
        "report": out_dir / "report.html",
    }
    write_private_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    with private_file(paths["predictions"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", *(f"dice_{x}" for x in result.labels), *(f"hd95_mm_{x}" for x in result.labels)])
        for i, case in enumerate(case_ids):
            hd = ["" if np.isnan(v) else f"{v:.3f}" for v in result.hd95[i]]
            w.writerow([case, *(f"{v:.4f}" for v in result.dice[i]), *hd])
    for v in VIEWS:
        with private_file(paths[f"montage-{v}"], "wb") as fh:
            montage_figure(v, views, result.labels).savefig(fh, format="png", dpi=DPI)
    which = "lowest, median and highest mean Dice"
    captions = [f"{v.capitalize()} slices of the cases of {which}: reference solid, prediction dashed" for v in VIEWS]
    footer = "Per-case Dice and HD95 (mm): <code>predictions.csv</code> next to this file."
    page = html_page(
        title,
        _sections(metrics, result),
        metrics.get("warnings", []),
        model_info,
        {f"montage-{v}": paths[f"montage-{v}"] for v in VIEWS},
        captions,
        footer,
    )
    write_private_text(paths["report"], page)
    return paths


def _sections(metrics: dict, result: Seg3DMetrics) -> str:
    rows = [("Cases", str(result.n_cases)), ("Mean Dice over labels", _num(result.mean_dice))]
    for name, s in result.per_label.items():
        rows.append((f"{name}: Dice (95% CI)", f"{_num(s.dice_mean)} ({_fmt_ci(s.dice_ci95) or 'n/a'})"))
        rows.append(
            (
                f"{name}: HD95, millimetres (95% CI)",
                f"{_num(s.hd95_mm_mean)} ({_fmt_ci(s.hd95_mm_ci95) or 'n/a'}), {s.n_hd95_mm} case(s)",
            )
        )
        rows.append(
            (
                f"{name}: HD95 undefined (both empty / false positive / false negative)",
                f"{s.n_hd95_undefined} ({s.n_both_empty} / {s.n_false_positive} / {s.n_false_negative})",
            )
        )
    data_rows = [(k.replace("_", " "), str(v)) for k, v in metrics.get("data", {}).items()]
    return (
        f"<h2>Metrics</h2>\n{_rows_table(rows, numeric=True)}\n"
        f"<h2>Volumes</h2>\n{_rows_table(data_rows, numeric=True)}\n"
    )
