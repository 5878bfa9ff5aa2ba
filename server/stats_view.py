"""The coordinator's data-QC table from ``stats.json`` (``fedrad-server stats``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

WITHHELD = "<min"  # a count the site withheld (below its min_count), or a category it does not have


def render_statistics(stats: dict[str, Any], console: Console) -> None:
    sites = stats.get("sites", {})
    names = stats.get("names", {})
    keys = sorted(
        {k for s in sites.values() for k in s.get("counts", {})},
        key=lambda k: (k.split(":")[0] != "images", k.split(":")[0], k),
    )
    table = Table(title=f"Site data statistics ({stats.get('time', '')}); counts below a site's min_count are withheld")
    table.add_column("statistic")
    columns = sorted(sites, key=lambda n: names.get(n, n))
    for node in columns:
        table.add_column(names.get(node, node), justify="right")
    for key in keys:
        table.add_row(key, *(str(sites[n].get("counts", {}).get(key, WITHHELD)) for n in columns))
    errors = {names.get(n, n): s["error"] for n, s in sites.items() if "error" in s}
    console.print(table)
    for name, reason in sorted(errors.items()):
        console.print(f"[yellow]{name}:[/] {reason}", highlight=False)
