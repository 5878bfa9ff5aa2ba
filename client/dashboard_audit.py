"""The site dashboard's first section: what left this hospital, from the outbound audit log.

The log is verified exactly as ``fedrad-site audit verify`` does it (the same key, from
:func:`client.audit_site.verify_key`, no pin file unless that command is given one), and every total on
the page comes from that :class:`client.audit.AuditSummary`: the byte count shown is ``verify()``'s.
The table and the charts read the log's lines (:func:`client.audit_view.load_entries`); when the log does
not verify they are still shown, marked as unverified, since they are the evidence to look at.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.audit import RECOVERY, AuditError, AuditSummary, verify
from client.audit_view import load_entries
from shared.config import ConfigError
from shared.dashboard import widgets as w

MAX_ROWS = 200  # log lines shown in the table, newest first
MAX_RUNS_CHARTED = 10  # runs drawn in the bytes-per-round chart (the latest)
MAX_RUNS_COUNTED = 30  # runs in the messages-per-run chart (the latest)


@dataclass
class AuditState:
    """One reading of the log: its summary when it verifies, else the reason; its lines either way."""

    log: Path
    summary: AuditSummary | None = None
    error: str | None = None  # the log does not verify (AuditError)
    problem: str | None = None  # it could not be checked (no key); not evidence of tampering
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.log.is_file()


def read_audit(log: Path, key_of: Any) -> AuditState:
    """Verify ``log`` with the key ``key_of()`` gives (``verify_key`` of site.yaml) and read its lines.

    ``key_of`` raises :class:`ConfigError` when the site's public key cannot be read, as the CLI does.
    """
    state = AuditState(Path(log))
    if not state.exists:
        return state
    try:
        state.summary = verify(state.log, key_of(), None)
    except AuditError as exc:
        state.error = str(exc)
    except ConfigError as exc:
        state.problem = str(exc)
    except OSError as exc:
        state.problem = f"{state.log}: cannot read it ({exc.strerror}); the dashboard's account needs read access"
    except Exception as exc:  # noqa: BLE001 - a line verify() cannot count (e.g. a list as run): show, not crash
        state.problem = f"verify failed on a line it cannot read: {type(exc).__name__}: {exc}"
    try:
        state.entries = [_light(e) for e in load_entries(state.log)]
    except OSError as exc:
        state.problem = state.problem or f"{state.log}: cannot read it ({exc.strerror})"
    return state


def _light(entry: Any) -> dict[str, Any]:
    """An entry as the page needs it: the arrays' digests (hundreds per model) become their count."""
    if not isinstance(entry, dict):
        return {"type": "UNREADABLE LINE"}
    if isinstance(entry.get("arrays"), dict):
        entry["arrays"] = len(entry["arrays"])
    return entry


def _scalar(v: Any) -> Any:
    """A table cell from a log line, which may have been edited: a finite number or a string (or None)."""
    if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def _short_time(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _metrics(entry: dict[str, Any]) -> str:
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict):
        return ""
    return " ".join(f"{k}={_value(v)}" for k, v in metrics.items())


def _decisions(entry: dict[str, Any], action: str) -> list[str]:
    out = []
    for d in entry.get("guard") or []:
        if isinstance(d, dict) and d.get("action") == action:
            out.append(f"{d.get('item', '?')} ({d.get('reason', '')})")
    return out


def _reason_cell(entry: dict[str, Any]) -> Any:
    reason = entry.get("reason")
    if reason is None:
        return ""
    reason = str(reason)
    kind = entry.get("type")
    level = "error" if kind in ("refused", "error") else "info"
    return w.cell(reason, level)


def _type_cell(entry: dict[str, Any]) -> Any:
    kind = str(entry.get("type", ""))
    if kind in ("refused", "error"):
        return w.cell(kind, "error")
    if kind == RECOVERY or kind.startswith(("INCOMPLETE", "UNREADABLE")):
        return w.cell(kind, "warn")
    return kind


def _row(entry: dict[str, Any]) -> list[Any]:
    withheld, dropped = _decisions(entry, "withhold"), _decisions(entry, "drop")
    return [
        _scalar(entry.get("seq")),
        _short_time(entry.get("time")),
        _scalar(entry.get("run")),
        _scalar(entry.get("round")),
        _type_cell(entry),
        _scalar(entry.get("bytes")),
        _metrics(entry),
        w.cell("; ".join(withheld), "warn") if withheld else "",
        w.cell("; ".join(dropped), "error") if dropped else "",
        _reason_cell(entry),
    ]


COLUMNS = ("#", "time (UTC)", "run", "round", "type", "bytes", "metrics sent", "withheld", "dropped", "reason")


def _messages(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines that are messages (what verify() counts): not crash recoveries, not unreadable lines."""
    return [e for e in entries if "time" in e and e.get("type") != RECOVERY]


def _run_key(run: Any) -> tuple[int, str]:
    return (0, f"{int(run):020d}") if isinstance(run, int) else (1, str(run))


def bytes_chart(entries: list[dict[str, Any]]) -> w.Widget:
    """Bytes sent in each round, one series per run (the latest runs)."""
    per: dict[Any, Counter] = defaultdict(Counter)
    for e in _messages(entries):
        try:
            per[_scalar(e.get("run"))][_scalar(e.get("round"))] += int(e.get("bytes") or 0)
        except (TypeError, ValueError):
            continue
    runs = sorted(per, key=_run_key)[-MAX_RUNS_CHARTED:]
    rounds = sorted({r for run in runs for r in per[run]}, key=_run_key)
    return w.bars(
        "audit-bytes",
        "Bytes sent per round" + (f" (the latest {MAX_RUNS_CHARTED} runs)" if len(per) > MAX_RUNS_CHARTED else ""),
        [f"round {r}" for r in rounds],
        [(f"run {run}", [per[run].get(r, 0) for r in rounds]) for run in runs],
        y_label="bytes",
    )


def messages_chart(entries: list[dict[str, Any]]) -> w.Widget:
    """Messages per run, stacked by type (train, evaluate, query, refused, ...)."""
    per: dict[Any, Counter] = defaultdict(Counter)
    for e in _messages(entries):
        per[_scalar(e.get("run"))][str(e.get("type"))] += 1
    runs = sorted(per, key=_run_key)[-MAX_RUNS_COUNTED:]
    kinds = sorted({k for run in runs for k in per[run]})
    return w.bars(
        "audit-messages",
        "Messages per run" + (f" (the latest {MAX_RUNS_COUNTED} runs)" if len(per) > MAX_RUNS_COUNTED else ""),
        [f"run {run}" for run in runs],
        [(kind, [per[run].get(kind, 0) for run in runs]) for kind in kinds],
        y_label="messages",
        stacked=True,
    )


def epsilon_chart(entries: list[dict[str, Any]]) -> w.Widget | None:
    """Per-image DP: the ε each run had spent after each round, as the site reported it (None: no DP rounds)."""
    per: dict[Any, list[tuple[Any, Any]]] = defaultdict(list)
    for e in _messages(entries):
        metrics = e.get("metrics")
        if isinstance(metrics, dict) and "dp-epsilon" in metrics:
            per[_scalar(e.get("run"))].append((_scalar(e.get("round")), metrics["dp-epsilon"]))
    if not per:
        return None
    series = [(f"run {run}", sorted(per[run], key=lambda p: _run_key(p[0]))) for run in sorted(per, key=_run_key)]
    return w.line("audit-epsilon", "Privacy spent: ε after each round (per-image DP)", series, y_label="ε")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _banner(state: AuditState) -> w.Widget:
    if not state.exists:
        return w.banner(
            "audit-status",
            "info",
            f"nothing has left this hospital: there is no audit log at {state.log} (this site has sent nothing "
            "yet, or work_dir in site.yaml is wrong)",
        )
    if state.error is not None:
        return w.banner("audit-status", "error", f"the audit log does not verify: {state.error}")
    if state.problem is not None or state.summary is None:
        return w.banner("audit-status", "error", f"the audit log could not be checked: {state.problem}")
    s = state.summary
    signature = "signature ok" if s.signature.startswith("valid") else f"signature: {s.signature}"
    level = "ok" if s.signature.startswith("valid") or s.signature == "nothing to sign yet" else "warn"
    return w.banner("audit-status", level, f"verified: {s.entries} messages, {s.bytes} bytes, {signature}")


def _tiles(state: AuditState) -> w.Widget:
    labels = ("messages", "bytes", "runs", "rounds", "guard violations", "withheld metrics", "refusals")
    if not state.exists:
        return w.tiles("audit-totals", [(label, 0) for label in labels])
    s = state.summary
    if s is None:  # the totals of a log that does not verify are not evidence of anything
        return w.tiles("audit-totals", [(label, "?", "error") for label in labels])
    return w.tiles(
        "audit-totals",
        [
            ("messages", s.entries),
            ("bytes", s.bytes),
            ("runs", s.runs),
            ("rounds", s.rounds),
            ("guard violations", s.violations, "error" if s.violations else "ok"),
            ("withheld metrics", s.withheld, "warn" if s.withheld else None),
            ("refusals", s.refused, "warn" if s.refused else None),
        ],
    )


def _evidence(state: AuditState) -> w.Widget:
    items: list[tuple[str, Any]] = [("audit log", state.log)]
    s = state.summary
    if s is not None:
        items += [
            ("bytes sent (arrays and refusal texts)", f"{s.bytes} ({_human(s.bytes)})"),
            ("messages by type", ", ".join(f"{k} {v}" for k, v in sorted(s.by_type.items())) or "none"),
            ("chain head sha256", s.last_hash),
            ("head signature", s.signature),
            ("crash recoveries", s.recoveries),
            ("pinned heads", "not checked here: `fedrad-site audit verify --pinned FILE` checks them"),
        ]
        items += [(f"note {i}", note) for i, note in enumerate(s.notes, start=1)]
    return w.kv("audit-evidence", items, title="Evidence")


def audit_section(state: AuditState) -> w.Section:
    """The section's widgets, ids ``audit-*``: banner, tiles, log table, charts, evidence."""
    newest = list(reversed(state.entries))[:MAX_ROWS]
    shown = len(newest)
    title = f"Outbound messages, newest first ({shown} of {len(state.entries)} lines)"
    if state.summary is None and state.exists:
        title += ": UNVERIFIED, the log may have been edited"
    widgets = [
        _banner(state),
        _tiles(state),
        w.table("audit-entries", COLUMNS, [_row(e) for e in newest], title=title, empty="nothing sent yet"),
        bytes_chart(state.entries),
        messages_chart(state.entries),
    ]
    eps = epsilon_chart(state.entries)
    if eps is not None:
        widgets.append(eps)
    widgets.append(_evidence(state))
    note = (
        "Every message this site sent: model weights (bytes), aggregate metrics and the outbound guard's "
        "decisions, from the signed, hash-chained audit log."
    )
    if len(state.entries) > MAX_ROWS:
        note += f" The table shows the last {MAX_ROWS} lines; `fedrad-site audit show --last 0` lists all."
    return w.section("audit", "What left this hospital", widgets, note=note)
