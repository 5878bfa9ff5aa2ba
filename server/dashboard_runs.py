"""The coordinator dashboard's run sections: reading a run folder, the current run live, past runs and
checkpoints. Built only from a run folder (``server/checkpoints.py``'s layout), ``metrics.jsonl`` as
``server/app.py`` writes it, and ``site-names.json`` (``server/coordinator.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.checkpoints import (
    BEST_FILE,
    LATEST_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    STATE_FILE,
    CheckpointError,
    RunDir,
)
from server.coordinator import SITE_NAMES_JSON
from server.dashboard_files import FileCache, FileProblem, fmt, megabytes, num, read_metrics_lines, slug
from shared.dashboard.widgets import Section, banner, cell, kv, links, section, table, text
from shared.tasks import get_task

AVERAGED_FILE = "averaged.pt"
MAX_ROUND_FILES = 20  # the checkpoint table lists the newest round files; older ones are counted


@dataclass
class RunView:
    """One run folder as the dashboard reads it."""

    path: Path
    state: dict | None
    rows: list[dict]
    headline: str  # the task's headline metric (best.pt's figure): asked of the task, never by its name
    planned: int | None  # rounds asked for
    names: dict[str, str]  # Flower node id -> enrolled site name
    status: str
    problems: list[str] = field(default_factory=list)  # "file: what is wrong", shown as banners
    progress: dict | None = None  # progress.json: the wave in flight (round, wave, nodes, since)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def slug(self) -> str:
        return slug(self.name)

    @property
    def last_round(self) -> int:
        done = (self.state or {}).get("last_round")
        return int(done) if isinstance(done, int) else max((r["round"] for r in self.rows), default=0)

    def label(self, node: Any) -> str:
        return self.names.get(str(node)) or f"node {node}"

    def nodes_of(self, site: str) -> set[str]:
        return {n for n, name in self.names.items() if name == site}


def read_run(
    path: Path,
    files: FileCache,
    *,
    default_headline: str | None,
    live_names: Mapping[str, str],
    live_status: str | None,
    planned: int | None,
) -> RunView:
    """Read ``path`` (state, metrics, names); every unreadable file becomes one of ``problems``.

    ``live_status``: the run's status from ``fedrad-server start`` / the Control API when this is the current run;
    otherwise the status is what the folder says. ``planned``: rounds asked for, when the caller knows (the
    current run's ``current-run.json``); else ``state.json``'s."""
    problems: list[str] = []
    state = None
    try:
        state = files.parsed(path / STATE_FILE, lambda p: RunDir(p.parent).state())
    except CheckpointError as exc:
        problems.append(str(exc))
    rows: list[dict] = []
    try:
        lines = files.parsed(path / METRICS_FILE, read_metrics_lines)
    except FileProblem as exc:
        problems.append(str(exc))
        lines = None
    if lines is not None:
        rows = lines.rows
        if lines.bad_lines:
            shown = ", ".join(map(str, lines.bad_lines[:5])) + (" …" if len(lines.bad_lines) > 5 else "")
            problems.append(f"{path / METRICS_FILE}: line(s) {shown} are not round rows; skipped")
    names: dict[str, str] = {}
    try:
        stored = files.json_object(path / SITE_NAMES_JSON) or {}
        names = {str(k): str(v) for k, v in stored.items()}
    except FileProblem as exc:
        problems.append(str(exc))
    names = {**names, **live_names}
    headline = default_headline
    if state and state.get("task_type"):
        try:
            headline = get_task(str(state["task_type"])).headline_metric
        except ValueError as exc:
            problems.append(f"{path / STATE_FILE}: {exc}")
    if headline is None:
        best = (state or {}).get("best") or {}
        headline = next((k for k in best if k not in ("round", "file")), "score")
    planned = planned or ((state or {}).get("num_server_rounds") if state else None)
    try:
        progress = files.json_object(path / PROGRESS_FILE)
    except FileProblem:
        progress = None  # written atomically; a stale or odd one only hides the live line
    view = RunView(path, state, rows, headline, planned, names, "", problems, progress)
    view.status = live_status or folder_status(view)
    return view


def folder_status(run: RunView) -> str:
    """A past run's status from its folder alone."""
    if run.state is None:
        return "no round finished"
    if run.planned and run.last_round >= run.planned:
        return "completed"
    return f"stopped after round {run.last_round}"


def status_level(status: str) -> str:
    s = status.lower()
    if "completed" in s:
        return "ok"
    if "fail" in s or "error" in s:
        return "error"
    if "running" in s or "submitted" in s or "pending" in s or "starting" in s:
        return "info"
    return "warn"


def part(row: Mapping, key: str) -> dict:
    value = row.get(key)
    return value if isinstance(value, dict) else {}


def failure_kind(reason: str) -> str:
    """Which kind of left-out reply a ``failures`` reason is (``server/app.py``, ``server/strategies/``)."""
    if reason.startswith("evaluate: "):
        return "evaluation"
    if reason.startswith("site error: ") or reason == "empty reply":
        return "site error or refusal"
    if reason.startswith("update norm "):
        return "norm screen"
    return "validation"


def failures_of(row: Mapping) -> list[dict]:
    return [f for f in row.get("failures") or [] if isinstance(f, dict)]


def no_reply(row: Mapping) -> int:
    """Sites asked to train that did not answer in time (counted in ``sites_failed``, not named in ``failures``)."""
    named = row.get("no_reply")
    if isinstance(named, dict) and isinstance(named.get("train"), list):
        return len(named["train"])
    trained = sum(1 for f in failures_of(row) if not str(f.get("reason", "")).startswith("evaluate: "))
    return max(0, int(num(row.get("sites_failed")) or 0) - trained)


def silent_nodes(row: Mapping) -> list[tuple[str, Any]]:
    """(wave, node id) of every site asked and silent, where the row names them (rows since ``no_reply``)."""
    named = row.get("no_reply")
    if not isinstance(named, dict):
        return []
    return [(wave, node) for wave in ("train", "evaluate") for node in named.get(wave) or []]


def banners(prefix: str, problems: list[str]) -> list[dict]:
    return [banner(f"{prefix}-problem-{i}", "error", p) for i, p in enumerate(problems)]


# ---------------------------------------------------------------- the current run
def current_run_section(run: RunView | None, run_id: Any) -> Section:
    title = "Current run"
    if run is None:
        return section("run", title, [text("run-none", "No run yet: start one with `fedrad-server start DIR`.")])
    rows = run.rows
    last = rows[-1] if rows else None
    seconds = [s for r in rows if (s := num(r.get("seconds"))) is not None]
    mean_s = sum(seconds) / len(seconds) if seconds else None
    left = (run.planned - run.last_round) if run.planned else None
    info = [
        ("run", run.name),
        ("run id", run_id if run_id is not None else "–"),
        ("status", run.status),
        ("round", f"{run.last_round} of {run.planned or '?'}"),
        ("strategy", (run.state or {}).get("strategy") or (last or {}).get("strategy") or "–"),
        ("headline metric", run.headline),
        ("seconds per round", f"{fmt(seconds[-1], 1)} last, {fmt(mean_s, 1)} mean" if seconds else "–"),
        (
            "time left (estimate)",
            f"{left * mean_s / 60:.1f} min" if mean_s is not None and left and "running" in run.status else "–",
        ),
        ("last round finished", (last or {}).get("time", "–")),
        ("folder", str(run.path)),
    ]
    widgets = [
        banner("run-status", status_level(run.status), f"{run.name}: {run.status}"),
        *banners("run", run.problems),
    ]
    now = in_flight(run)
    if now:
        widgets.append(banner("run-now", "info", now))
    widgets.append(kv("run-info", info))
    widgets.append(last_round_table(run, last))
    return section("run", title, widgets)


def in_flight(run: RunView) -> str | None:
    """ "round 3: train wave, waiting for site-a, site-b since 12:00:03" while a round is in flight, else None."""
    p = run.progress
    if not p or "running" not in run.status or not isinstance(p.get("round"), int) or p["round"] <= run.last_round:
        return None
    asked = ", ".join(sorted(run.label(n) for n in p.get("nodes") or [])) or "no site"
    return f"round {p['round']}: {p.get('wave', '?')} wave, asked {asked}, since {p.get('since', '?')}"


def last_round_table(run: RunView, last: Mapping | None) -> dict:
    """Who answered the last finished round, who was left out and why (as each site or the server stated it)."""
    out: list[list[Any]] = []
    if last is not None:
        answered = part(last, "site_metrics")
        for node in sorted(answered, key=run.label):
            parts = [k for k in ("train", "eval") if isinstance(answered[node], dict) and answered[node].get(k)]
            out.append([run.label(node), cell("answered", "ok"), " and ".join(parts) or "–"])
        for f in failures_of(last):
            reason = str(f.get("reason", ""))
            out.append([run.label(f.get("node")), cell(failure_kind(reason), "error"), reason])
        silent = silent_nodes(last)
        for wave, node in silent:
            out.append(
                [run.label(node), cell("no reply", "warn"), f"{wave}: asked, no answer within the round timeout"]
            )
        if no_reply(last) and not silent:  # a row from before the silent sites were named
            out.append(["–", cell("no reply", "warn"), f"{no_reply(last)} site(s) asked did not answer in time"])
        if not answered and num(last.get("sites_answered")):  # a row from before per-site metrics were recorded
            out.insert(0, ["–", cell("answered", "ok"), f"{last['sites_answered']} site(s) (not named in this row)"])
    title = f"Round {last['round']}: sites" if last else "Last round"
    return table("run-last-round", ["site", "outcome", "detail"], out, title=title, empty="no round finished yet")


# ---------------------------------------------------------------- past runs and checkpoints
def published(run_dir: Path, state: dict | None) -> tuple[str, Path | None]:
    """Which model export publishes for this run (``server/export.py::pick_model``), as a phrase and its path."""
    from server.export import pick_model
    from shared.config import ConfigError

    try:
        path = pick_model(run_dir, best=False)
    except ConfigError:
        return "none yet", None
    if path.name == AVERAGED_FILE:
        rounds = ((state or {}).get("averaged") or {}).get("rounds") or ["?", "?"]
        return f"{path.name} (mean of rounds {rounds[0]}–{rounds[-1]})", path
    return path.name, path


def best_text(run: RunView) -> str:
    best = (run.state or {}).get("best") or {}
    value = best.get(run.headline)
    return f"{run.headline} {fmt(value)} (round {best.get('round')})" if value is not None else "–"


def runs_section(runs: list[RunView]) -> Section:
    rows, cards = [], []
    for run in runs:
        phrase, path = published(run.path, run.state)
        rows.append(
            [
                run.name,
                f"{run.last_round}/{run.planned or '?'}",
                best_text(run),
                cell(run.status, status_level(run.status)),
                phrase,
                (run.state or {}).get("updated") or "–",
            ]
        )
        if path is not None:
            cards.append((f"model card: {run.name}", f"/doc/card-{run.slug}"))
    widgets = [
        table(
            "runs-table",
            ["run", "rounds", "best", "status", "published model", "last round written"],
            rows,
            empty="no run folder under runs/ yet",
        )
    ]
    widgets.append(links("runs-cards", cards, title="Model cards (the published model of each run)"))
    problems = [p for run in runs for p in run.problems]
    return section("runs", "Past runs", [*banners("runs", problems), *widgets])


def _when(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).isoformat(timespec="seconds")
    except OSError:
        return "–"


def _size(path: Path) -> str:
    try:
        return megabytes(path.stat().st_size)
    except OSError:
        return "–"


def checkpoints_section(run: RunView | None) -> Section:
    title = "Checkpoints"
    if run is None:
        return section("checkpoints", title, [text("checkpoints-none", "No run yet.")])
    state = run.state or {}
    phrase, pub = published(run.path, run.state)
    rounds = sorted(run.path.glob("round-*.pt"))
    older = max(0, len(rounds) - MAX_ROUND_FILES)
    best = state.get("best") or {}
    averaged = state.get("averaged") or {}
    rows = []
    named = (
        (BEST_FILE, best.get("round"), f"best {run.headline} {fmt(best.get(run.headline))}" if best else ""),
        (LATEST_FILE, state.get("last_round"), "the last finished round"),
        (AVERAGED_FILE, "–".join(map(str, averaged.get("rounds") or [])) or None, "mean of the last rounds"),
    )
    for name, rnd, what in named:
        p = run.path / name
        if p.is_file():
            rows.append([name, rnd if rnd is not None else "–", _size(p), _when(p), what])
    for p in reversed(rounds[older:]):  # newest first, after the named files
        digits = p.stem.removeprefix("round-")
        rows.append([p.name, int(digits) if digits.isdigit() else "–", _size(p), _when(p), ""])
    for r in rows:
        if pub is not None and r[0] == pub.name:
            r[4] = cell(f"published; {r[4]}".rstrip("; "), "ok")
    widgets = [
        table("checkpoints-table", ["file", "round", "size", "written (UTC)", "role"], rows, empty="no checkpoint yet"),
        kv("checkpoints-info", [("run", run.name), ("published model", phrase), ("older round files", older)]),
    ]
    return section("checkpoints", title, widgets, note=f"run {run.name}")
