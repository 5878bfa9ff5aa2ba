"""The coordinator dashboard's curves: the run's round figures (the task's headline, loss, examples, ε, traffic,
left-out replies, timing) and each site's own figures (``site_metrics``), one point per finished round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.dashboard_files import num
from server.dashboard_runs import RunView, banners, failure_kind, failures_of, no_reply, part
from shared.dashboard.widgets import Section, line, section, text


def _points(rows: list[dict], get) -> list[tuple[int, Any]]:  # noqa: ANN001 - row -> value
    return [(r["round"], get(r)) for r in rows]


def curves_section(run: RunView | None) -> Section:
    title = "Per-round curves"
    if run is None:
        return section("curves", title, [text("curves-none", "No run yet.")])
    rows, h = run.rows, run.headline
    evaluated = [r for r in rows if part(r, "eval")]
    widgets = [
        line(
            "curve-headline",
            f"{h}: federated evaluation on the sites' held-out patients",
            [(h, _points(evaluated, lambda r: part(r, "eval").get(h)))],
            y_label=h,
        ),
        line(
            "curve-loss",
            "Loss",
            [
                ("training loss", _points(rows, lambda r: part(r, "train").get("train-loss"))),
                ("evaluation loss", _points(evaluated, lambda r: part(r, "eval").get("loss"))),
            ],
            y_label="loss",
        ),
        line(
            "curve-examples",
            "Examples per round (all sites)",
            [
                ("training", _points(rows, lambda r: part(r, "train").get("num-examples"))),
                ("evaluation", _points(evaluated, lambda r: part(r, "eval").get("num-examples"))),
            ],
            y_label="examples",
        ),
    ]
    eps = [r for r in rows if num(part(r, "privacy").get("epsilon")) is not None]
    if eps:
        delta = part(eps[-1], "privacy").get("delta")
        per_image = part(eps[-1], "privacy").get("level") == "image"
        widgets.append(
            line(
                "curve-epsilon",
                f"Differential privacy spent: ε at δ = {delta}" + (" (per image, largest site)" if per_image else ""),
                [("ε", _points(eps, lambda r: part(r, "privacy").get("epsilon")))],
                y_label="ε",
            )
        )

    def traffic(direction: str):  # noqa: ANN202
        def get(r: Mapping) -> float | None:
            per_site, n = num(part(r, "bytes_per_site").get(direction)), num(r.get("sites_answered"))
            return per_site * n / 1e6 if per_site is not None and n is not None else None

        return get

    widgets.append(
        line(
            "curve-bytes",
            "Model traffic per round (MB, all answering sites)",
            [("to the sites", _points(rows, traffic("down"))), ("from the sites", _points(rows, traffic("up")))],
            y_label="MB",
        )
    )
    kinds = ("norm screen", "validation", "site error or refusal", "evaluation")
    series = [
        (k, _points(rows, lambda r, k=k: sum(failure_kind(str(f.get("reason", ""))) == k for f in failures_of(r))))
        for k in kinds
    ]
    widgets.append(
        line(
            "curve-rejections",
            "Replies left out per round",
            [*series, ("no reply in time", _points(rows, no_reply))],
            y_label="replies",
        )
    )
    widgets.append(
        line(
            "curve-seconds",
            "Seconds per round",
            [
                ("whole round", _points(rows, lambda r: r.get("seconds"))),
                ("training wave", _points(rows, lambda r: part(r, "timing").get("train_wave_s"))),
                ("evaluation wave", _points(rows, lambda r: part(r, "timing").get("evaluate_wave_s"))),
                ("waiting for sites", _points(rows, lambda r: part(r, "timing").get("wait_sites_s"))),
            ],
            y_label="s",
        )
    )
    return section("curves", title, [*banners("curves", run.problems), *widgets], note=f"run {run.name}")


def site_curves_section(run: RunView | None) -> Section:
    """Each site's own figures per round (``site_metrics``), series named by enrolled site."""
    title = "Per-site curves"
    if run is None:
        return section("site-curves", title, [text("site-curves-none", "No run yet.")])
    h = run.headline
    evals: dict[str, list] = {}
    losses: dict[str, list] = {}
    for r in run.rows:
        for node, m in part(r, "site_metrics").items():
            if not isinstance(m, dict):
                continue
            name = run.label(node)
            if part(m, "eval"):
                evals.setdefault(name, []).append((r["round"], part(m, "eval").get(h)))
            if part(m, "train"):
                losses.setdefault(name, []).append((r["round"], part(m, "train").get("train-loss")))
    note = (
        ""
        if any("site_metrics" in r for r in run.rows) or not run.rows
        else "This run's metrics.jsonl has no per-site figures (written before FedRad recorded them)."
    )
    return section(
        "site-curves",
        title,
        [
            line("site-curve-headline", f"{h} at each site (its held-out patients)", sorted(evals.items()), y_label=h),
            line("site-curve-train-loss", "Training loss at each site", sorted(losses.items()), y_label="loss"),
        ],
        note=note,
    )
