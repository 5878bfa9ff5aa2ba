"""Render a ``fedrad-site fetch`` summary for people: one table of counts, then what is missing or refused."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_fetch(report: dict, console: Console, max_rows: int = 30) -> None:
    fetched = report["fetched"]
    secs = fetched["seconds"]
    console.print(
        f"[bold]Fetch[/] from {escape(report['peer'])} by {report['retrieve']} into {escape(report['receive_dir'])}",
        highlight=False,
    )
    table = Table(title="Summary", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("detail")
    table.add_row("asked", str(report["asked"]), "accessions, study UIDs or queries")
    table.add_row("found at PACS", str(report["found"]), "studies")
    rate = f", {fetched['instances'] / secs:.1f} instances/s, {fetched['bytes'] / 1e6 / secs:.1f} MB/s" if secs else ""
    table.add_row(
        "fetched",
        str(fetched["studies"]),
        f"studies: {fetched['instances']} instances, {_mb(fetched['bytes'])} in {secs:.1f} s{rate}",
    )
    table.add_row(
        "already here",
        str(fetched["studies_already_here"]),
        f"studies complete on disk; {fetched['already_here']} instances kept, not rewritten",
    )
    table.add_row("missing", str(len(report["missing"])), "asked, but PACS has no such study")
    table.add_row("refused / incomplete", str(len(report["refused"])), "PACS answered with a failure status")
    console.print(table)
    if report["missing"]:
        shown = ", ".join(report["missing"][:max_rows]) + (" …" if len(report["missing"]) > max_rows else "")
        console.print(f"[yellow]missing at PACS:[/] {escape(shown)}", highlight=False, soft_wrap=True)
    if report["refused"]:
        rt = Table(title="Refused or incomplete", title_justify="left")
        for col in ("asked", "status", "meaning"):
            rt.add_column(col)
        for r in report["refused"][:max_rows]:
            rt.add_row(escape(r["asked"]), r.get("code") or "", escape(r.get("meaning") or ""))
        console.print(rt)
    if report["unavailable"]:
        console.print(f"[bold red]PACS unavailable:[/] {escape(report['unavailable'])}", highlight=False)
        if report["not_asked"]:
            console.print(f"not asked: {len(report['not_asked'])} of {report['asked']}", highlight=False)
    for note in report["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(
        "[green]every study asked for is here[/]" if report["ok"] else "[yellow]not everything could be fetched[/]"
    )
    console.print(f"log: {escape(report['log'])}", highlight=False)
