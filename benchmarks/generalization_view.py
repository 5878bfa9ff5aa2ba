"""Terminal tables for ``fedrad-bench generalization`` (the same figures as report.html)."""

from __future__ import annotations

from rich.table import Table

from benchmarks.generalization_report import PAIRED_HEADER, _fmt, metric_title, paired_rows
from shared.cli_support import out


def _summary_table(title: str, models: dict, unseen: list[str]) -> Table:
    """Per model: mean over the site test sets ± sd over seeds, its ratio to pooled, each unseen site."""
    summary = Table(title=title, title_justify="left")
    for name in ["model", "site test sets", "× pooled", *unseen]:
        summary.add_column(name, justify="left" if name == "model" else "right")
    for model, r in models.items():
        summary.add_row(
            model, _fmt(r["site_mean"]), str(r["ratio_to_pooled"] or "–"), *(_fmt(r["unseen"][u]) for u in unseen)
        )
    return summary


def _paired_table(title: str, results: dict) -> Table:
    table = Table(title=title, title_justify="left")
    for name in PAIRED_HEADER[:-1]:  # per seed: in results.json and report.html
        table.add_column(name, justify="left" if name in ("model", "against", "test set") else "right")
    for row in paired_rows(results):
        table.add_row(*row[:-1])
    return table


def render_results(results: dict) -> None:
    cols = results["columns"]
    unseen = [c for c in cols if not c.endswith(" test")]
    seeds = results["config"]["seeds"]
    title = f"Mean {metric_title(results)} (± sd over {seeds} seed(s)); {results['engine']}"
    out.print(_summary_table(title, results["models"], unseen))
    for metric, models in (results.get("metric_models") or {}).items():  # segmentation: each label's summary
        out.print(_summary_table(f"Mean {metric_title(results, metric)} (± sd over {seeds} seed(s))", models, unseen))
    matrix = Table(title="Cross-site matrix: models (rows) × test sites (columns)", title_justify="left")
    for name in ["model", *cols]:
        matrix.add_column(name, justify="left" if name == "model" else "right")
    for model, row in results["matrix"].items():
        matrix.add_row(model, *(_fmt(row.get(c)) for c in cols))
    out.print(matrix)
    for metric, rows in (results.get("metric_matrices") or {}).items():  # segmentation: each label's Dice
        table = Table(
            title=f"{metric_title(results, metric)}: models (rows) × test sites (columns)", title_justify="left"
        )
        for name in ["model", *cols]:
            table.add_column(name, justify="left" if name == "model" else "right")
        for model, row in rows.items():
            table.add_row(model, *(_fmt(row.get(c)) for c in cols))
        out.print(table)
    if results.get("paired"):
        out.print(_paired_table("Paired differences, seed by seed (measurable: 95 % CI excludes 0)", results))
    for metric, pairs in (results.get("metric_paired") or {}).items():
        if pairs:
            out.print(_paired_table(f"Paired differences in {metric_title(results, metric)}", {"paired": pairs}))
    v = results.get("verdict") or {}
    out.print(
        f"best federated: [bold]{v.get('best_federated')}[/] at {v.get('ratio_to_pooled')} × pooled; beats local-only "
        f"on own test sets {v.get('beats_local_on_own_test')}, on unseen {v.get('beats_local_on_unseen')}"
    )
    for key, label in (("with_levers", "with levers"), ("for_unseen", "best at the unseen sites")):
        if w := v.get(key):
            out.print(
                f"{label}: [bold]{w['best_federated']}[/] at {w['ratio_to_pooled']} × pooled; beats local-only "
                f"on own test sets {w['beats_local_on_own_test']}, on unseen {w['beats_local_on_unseen']}"
            )
