"""The cross-site matrix as a table (``fedrad-server crossval``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def render_crossval(data: dict, console: Console) -> None:
    sites = data["sites"]
    metric = data.get("metric", "auc")  # the task's headline (older files: AUC)
    table = Table(
        title=f"Cross-site evaluation: {metric} [95 % CI] on each site's held-out patients (n) — model {data['model']}",
        title_justify="left",
    )
    table.add_column("model")
    for s in sites:
        table.add_column(s, justify="right")
    for model, row in data["matrix"].items():
        cells = []
        for s in sites:
            cell = row.get(s, {})
            if "error" in cell:
                cells.append(f"[dim]{cell['error'][:40]}[/]")
            else:
                cells.append(metric_cell(cell, metric))
        table.add_row(model, *cells)
    console.print(table)
    for site, why in (data.get("not_shared") or {}).items():
        console.print(f"{site}: local model not shared ({why})")


def metric_cell(cell: dict, metric: str = "auc") -> str:
    """ "0.912 [0.861–0.955] (n=120)": a site's ``metric`` with its own bootstrap interval, when it sent one
    ("–" where the site could not compute it: its ``<metric>-examples`` count, when it sends one, is 0)."""
    counted = cell.get(f"{metric}-examples", 1)
    value = cell.get(metric) if counted else None
    text = "–" if value is None else f"{value:.3f}"
    if value is not None and f"{metric}-ci-low" in cell and f"{metric}-ci-high" in cell:
        text += f" [{cell[f'{metric}-ci-low']:.3f}–{cell[f'{metric}-ci-high']:.3f}]"
    return text + f" (n={int(cell.get('num-examples', 0))})"
