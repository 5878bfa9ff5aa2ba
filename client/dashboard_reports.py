"""The evaluation reports already written at this site, found on disk, for the site dashboard.

``fedrad-site evaluate`` (and ``--explain``, which adds Grad-CAM to the same page) writes a folder with
``report.html`` and ``metrics.json`` beside it (``shared/tasks/<task>/report.py``); its default folder is
``WORK_DIR/reports/<model>-<time>``. The dashboard looks for ``report.html`` in the work dir's
``reports/``, in site.yaml's folder and in any folder given with ``--reports``, a few levels deep, never
inside the data export or the ingest cache, never through a symbolic link. Each report gets an opaque id
(``report-N``), kept for as long as the dashboard runs; the page links to ``/doc/report-N`` only.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.dashboard import widgets as w

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
MAX_DEPTH = 4  # folder levels below a root
MAX_FOLDERS = 5000  # folders visited per scan, all roots together: a scan stays cheap whatever lies there
# (kind, headline key in metrics.json, its label), first match wins: the tasks' own metrics.json keys
HEADLINES = (
    ("segmentation3d", "mean_dice", "mean Dice", "hd95_unit"),
    ("segmentation", "mean_dice", "mean Dice", None),
    ("multilabel", "auc_macro", "macro AUC", None),
    ("classification", "auc", "AUC", None),
)


@dataclass(frozen=True)
class Report:
    id: str
    html: Path
    metrics: Path | None
    name: str
    kind: str
    written: float  # mtime
    headline: str
    cases: Any


def _skip(path: Path, skip: list[Path]) -> bool:
    return any(path == s or s in path.parents for s in skip)


def _walk(root: Path, skip: list[Path], budget: list[int]) -> list[Path]:
    """``report.html`` files under ``root`` (regular files, not links), breadth first, bounded."""
    found, level = [], [root]
    for _ in range(MAX_DEPTH + 1):
        below = []
        for folder in level:
            if budget[0] <= 0:
                return found
            budget[0] -= 1
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                            if not _skip(Path(e.path), skip):
                                below.append(Path(e.path))
                        elif e.name == REPORT_FILE and e.is_file(follow_symlinks=False):
                            found.append(Path(e.path))
            except OSError:
                continue
        level = sorted(below)
    return found


def _metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _title(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return ""
    m = re.search(r"<title>(.*?)</title>", head, re.S)
    return html.unescape(m.group(1)).strip() if m else ""


def _describe(metrics: dict[str, Any], title: str) -> tuple[str, str, Any]:
    """(kind, headline text, cases) from a report's metrics.json (and its page title)."""
    cases = metrics.get("n", metrics.get("n_cases"))
    for kind, key, label, marker in HEADLINES:
        if key in metrics and (marker is None or marker in metrics):
            value = metrics[key]
            text = f"{label} {value:.3f}" if isinstance(value, int | float) else f"{label} {value}"
            if metrics.get("explained_cases"):
                kind += " + Grad-CAM"
            return kind, text, cases
    return (title or "report"), "", cases


class ReportIndex:
    """Reports found under the roots, with ids that stay the same while the dashboard runs."""

    def __init__(self, roots: list[Path], skip: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        self.skip = [Path(s).resolve() for s in skip]
        self._ids: dict[Path, str] = {}
        self.reports: list[Report] = []

    def scan(self) -> list[Report]:
        budget, seen, reports = [MAX_FOLDERS], set(), []
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in _walk(root, self.skip, budget):
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                reports.append(self._report(path))
        reports.sort(key=lambda r: r.written, reverse=True)
        self.reports = reports
        return reports

    def _report(self, path: Path) -> Report:
        doc_id = self._ids.setdefault(path, f"report-{len(self._ids) + 1}")
        beside = path.with_name(METRICS_FILE)
        metrics_path = beside if beside.is_file() and not beside.is_symlink() else None
        kind, headline, cases = _describe(_metrics(metrics_path) if metrics_path else {}, _title(path))
        try:
            written = path.stat().st_mtime
        except OSError:
            written = 0.0
        name = next((str(path.parent.relative_to(r)) for r in self.roots if r in path.parents), str(path.parent))
        name = path.parent.name if name == "." else name
        return Report(doc_id, path, metrics_path, name, kind, written, headline, cases)


def documents(reports: list[Report]) -> dict[str, tuple[Path, str]]:
    """id → (file, media type): each report's page and its metrics.json (``report-N-metrics``)."""
    out: dict[str, tuple[Path, str]] = {}
    for r in reports:
        out[r.id] = (r.html, "text/html")
        if r.metrics is not None:
            out[f"{r.id}-metrics"] = (r.metrics, "application/json")
    return out


def reports_section(index: ReportIndex) -> w.Section:
    """Section ``reports``: table ``reports-list`` and links ``reports-links`` (to ``/doc/report-N``)."""
    reports = index.reports
    rows = [
        [
            r.name,
            r.kind,
            datetime.fromtimestamp(r.written, UTC).strftime("%Y-%m-%d %H:%M") if r.written else "",
            r.headline,
            r.cases,
            r.id,
        ]
        for r in reports
    ]
    links = [(f"{r.name}: report", f"/doc/{r.id}") for r in reports]
    links += [(f"{r.name}: metrics.json", f"/doc/{r.id}-metrics") for r in reports if r.metrics is not None]
    where = ", ".join(str(r) for r in index.roots)
    return w.section(
        "reports",
        "Evaluation reports",
        [
            w.table(
                "reports-list",
                ("report", "kind", "written (UTC)", "headline", "cases", "document"),
                rows,
                title="Reports written at this site, newest first",
                empty=f"no report.html found under {where}",
            ),
            w.links("reports-links", links, title="Open a report"),
        ],
        note="Reports hold per-case results and images: they are shown here because this page never leaves the "
        f"site machine. Looked for under {where}.",
    )
