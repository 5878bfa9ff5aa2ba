"""The cross-site matrix as a table (``fedrad-server crossval``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def render_crossval(data: dict, console: Console) -> None:
    sites = data["sites"]
    table = Table(title=f"Cross-site evaluation: AUC [95 % CI] on each site's held-out patients (n) — model {data['model']}",
                  title_justify="left")  # fmt: skip
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
                cells.append(auc_cell(cell))
        table.add_row(model, *cells)
    console.print(table)
    for site, why in (data.get("not_shared") or {}).items():
        console.print(f"{site}: local model not shared ({why})")


def auc_cell(cell: dict) -> str:
    """"0.912 [0.861–0.955] (n=120)": a site's AUC with its own bootstrap interval, when it sent one."""
    auc = cell.get("auc") if cell.get("auc-examples") else None
    text = "–" if auc is None else f"{auc:.3f}"
    if auc is not None and "auc-ci-low" in cell and "auc-ci-high" in cell:
        text += f" [{cell['auc-ci-low']:.3f}–{cell['auc-ci-high']:.3f}]"
    return text + f" (n={int(cell.get('num-examples', 0))})"
