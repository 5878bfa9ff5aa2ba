"""Tables of the site's outbound audit log (``fedrad-site audit show|verify``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from client.audit import AuditSummary, read_entries


def load_entries(log: Path, last: int = 0) -> list[dict[str, Any]]:
    """The log's entries as dicts (the last ``last``; all when 0). Unparsable lines are shown as such."""
    entries = []
    for number, line in read_entries(log):
        try:
            entries.append(json.loads(line))
        except ValueError:
            torn = not line.endswith(b"\n")  # a crash mid-write; cut off (and kept) at the next message
            entries.append({"seq": number, "type": "INCOMPLETE LINE (crash)" if torn else "UNREADABLE LINE"})
    return entries[-last:] if last else entries


def _metrics(m: dict[str, Any]) -> str:
    keys = ("num-examples", "train-loss", "train-acc", "loss", "accuracy", "auc")
    return " ".join(f"{k}={m[k]:.3g}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in keys if k in m)


def render_entries(entries: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Outbound messages (newest last)")
    for col in ("#", "time (UTC)", "run", "round", "type", "bytes", "arrays", "metrics", "guard"):
        table.add_column(col, justify="right" if col in ("#", "round", "bytes", "arrays") else "left")
    for e in entries:
        guard = "; ".join(f"{d['action']} {d['item']}" for d in e.get("guard", [])) or e.get("reason", "")
        table.add_row(
            str(e.get("seq")),
            str(e.get("time", ""))[:19],
            str(e.get("run", "")),
            str(e.get("round", "")),
            str(e.get("type")),
            str(e.get("bytes", "")),
            str(len(e.get("arrays", {}))),
            _metrics(e.get("metrics", {})),
            guard,
        )
    console.print(table)


def render_summary(s: AuditSummary, console: Console) -> None:
    table = Table(title=f"Audit log verified: {s.path}", show_header=False)
    for label, value in (
        ("messages", s.entries),
        ("by type", ", ".join(f"{k} {v}" for k, v in sorted(s.by_type.items()))),
        ("bytes sent (arrays)", f"{s.bytes:,}"),
        ("runs", s.runs),
        ("rounds", s.rounds),
        ("guard violations (dropped)", s.violations),
        ("metrics withheld (min_count)", s.withheld),
        ("runs refused (code not approved)", s.refused),
        ("chain head sha256", s.last_hash),
        ("head signature", s.signature),
        ("pinned heads checked", s.pins_checked or "none given (--pinned)"),
        ("crash recoveries", s.recoveries),
    ):
        table.add_row(label, str(value))
    console.print(table)
    for note in s.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
