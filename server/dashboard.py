"""``fedrad-server dashboard DIR``: the coordinator's read-only page, built from the consortium folder.

:class:`CoordinatorPage` is a ``shared.dashboard.server.PageSource``: it turns the files ``fedrad-server`` and the
ServerApp already write into the page model of :mod:`shared.dashboard.widgets` (plain JSON: this module never
builds HTML; the web layer draws every value as text). It reads, never writes, the consortium folder:

* sites: ``server/status.py::collect_status`` (registry, fingerprints, certificates, and, while ``start`` runs,
  who is online and when the SuperLink last heard from each site);
* runs: ``runs/<name>/`` (``state.json``, ``metrics.jsonl``, ``site-names.json``, the model files) and
  ``state/current-run.json`` (:mod:`server.dashboard_runs`);
* ``stats/*/stats.json``, ``crossval/*/crossval.json`` and benchmark ``results.json`` files
  (:mod:`server.dashboard_data`).

``page()`` never raises: an unreadable file is an error banner naming it, in the section that needed it. Model
cards are rendered as ``fedrad-server export`` writes them, into a private temporary folder, when a document is
asked for.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.consortium import CONSORTIUM_YAML, ConsortiumConfig, load_consortium
from server.coordinator import CROSSVAL_DIR, CURRENT_RUN_JSON, RUNS_DIR, STATE_DIR, STATS_DIR
from server.crossval import CROSSVAL_FILE
from server.dashboard_curves import curves_section, site_curves_section
from server.dashboard_data import bench_id, bench_section, crossval_section, latest_file, stats_section
from server.dashboard_files import FileCache, FileProblem, signature
from server.dashboard_runs import (
    RunView,
    checkpoints_section,
    current_run_section,
    published,
    read_run,
    runs_section,
)
from server.statistics import STATS_FILE
from shared.dashboard import widgets as w

BENCH_DIR = (
    "benchmarks"  # DIR/benchmarks/<name>/results.json: fedrad-bench generalization output kept with the consortium
)
BENCH_FILE = "results.json"
MARKDOWN = "text/markdown; charset=utf-8"
JSON = "application/json"
PLAIN = "text/plain; charset=utf-8"


@dataclass
class Snapshot:
    """What one page build read."""

    cfg: ConsortiumConfig | None = None
    status: dict | None = None
    runs: list[RunView] = field(default_factory=list)
    current: RunView | None = None  # the current run (state/current-run.json), else the newest run folder
    run_id: Any = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DocEntry:
    id: str
    label: str
    path: Path | None  # None: rendered on request (a model card)
    media_type: str
    run: Path | None = None


class CoordinatorPage:
    """The coordinator's dashboard for the consortium folder ``directory`` (a ``PageSource``)."""

    def __init__(self, directory: Path, benchmarks: Sequence[Path] = ()) -> None:
        self.directory = Path(directory).resolve()
        cfg = load_consortium(self.directory)  # not a consortium folder: ConfigError (the CLI's exit 2)
        self.title = f"{cfg.name}: FedRad coordinator"
        self.benchmarks = [Path(b).resolve() for b in benchmarks]
        self.files = FileCache()
        self._rendered: dict[str, tuple[tuple, Path]] = {}
        self._tmp: Path | None = None

    # ------------------------------------------------------------ PageSource
    def page(self) -> dict:
        try:
            snap = self.snapshot()
            sections = [
                _guarded("sites", "Sites", lambda: sites_section(snap)),
                _guarded("run", "Current run", lambda: current_run_section(snap.current, snap.run_id)),
                _guarded("curves", "Per-round curves", lambda: curves_section(snap.current)),
                _guarded("site-curves", "Per-site curves", lambda: site_curves_section(snap.current)),
                _guarded("runs", "Past runs", lambda: runs_section(snap.runs)),
                _guarded("checkpoints", "Checkpoints", lambda: checkpoints_section(snap.current)),
                _guarded("data", "Data statistics", lambda: stats_section(self.stats_path(snap.current), self.files)),
                _guarded(
                    "crossval",
                    "Cross-site evaluation",
                    lambda: crossval_section(latest_file(self.directory / CROSSVAL_DIR, CROSSVAL_FILE), self.files),
                ),
                _guarded("bench", "Generalization benchmark", lambda: bench_section(self.bench_paths(), self.files)),
                _guarded("documents", "Documents", lambda: self.documents_section(snap)),
            ]
            return w.page(self.title, self.subtitle(snap), sections, refresh_s=2.0 if _running(snap) else 10.0)
        except Exception as exc:  # noqa: BLE001 - the page says what failed; the dashboard keeps serving
            failed = w.banner("page-error", "error", f"the page could not be built: {type(exc).__name__}: {exc}")
            return w.page(self.title, "", [w.section("error", "Dashboard error", [failed])])

    def documents(self) -> dict:
        """``{id: shared.dashboard.server.Document}``: model cards (rendered on request), metrics, stats,
        cross-site and benchmark results."""
        from shared.dashboard.server import Document

        out = {}
        for entry in self.doc_entries(self.run_dirs()):
            path = entry.path if entry.path is not None else self.render_card(entry)
            if path is not None:
                out[entry.id] = Document(path, entry.media_type)
        return out

    # ------------------------------------------------------------ reading
    def snapshot(self) -> Snapshot:
        from server.status import collect_status

        snap = Snapshot()
        try:
            snap.cfg = self.files.parsed(self.directory / CONSORTIUM_YAML, lambda p: load_consortium(p.parent))
        except Exception as exc:  # noqa: BLE001 - ConfigError names the file
            snap.problems.append(str(exc))
        try:
            snap.status = collect_status(self.directory)
        except Exception as exc:  # noqa: BLE001 - a broken registry or certificate: the message names the file
            snap.problems.append(f"site status: {exc}")
        current_json: dict = {}
        try:
            current_json = self.files.json_object(self.directory / STATE_DIR / CURRENT_RUN_JSON) or {}
        except FileProblem as exc:
            snap.problems.append(str(exc))
        run = (snap.status or {}).get("run") or {}
        current_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        if current_dir is None and current_json.get("run_dir"):
            current_dir = Path(current_json["run_dir"])
        dirs = self.run_dirs()
        if current_dir is None and dirs:
            current_dir = dirs[-1]
        if current_dir is not None and current_dir not in dirs:
            dirs.append(current_dir)
        headline = None
        if snap.cfg is not None:
            try:
                headline = snap.cfg.task.spec().headline_metric
            except Exception as exc:  # noqa: BLE001 - an unknown task type (a plug-in not loaded here)
                snap.problems.append(f"{self.directory / CONSORTIUM_YAML}: task: {exc}")
        live_names = {
            str(s["node_id"]): s["name"] for s in (snap.status or {}).get("sites", []) if s.get("node_id") is not None
        }
        is_current_json = current_json.get("run_dir") == str(current_dir)
        for d in dirs:
            current = d == current_dir
            view = read_run(
                d,
                self.files,
                default_headline=headline,
                live_names=live_names,
                # the submitted run's status (live from the Control API while the server runs); a folder
                # current-run.json does not name has only what the folder says
                live_status=(
                    (run.get("status") if run.get("run_dir") == str(d) else None) or current_json.get("status")
                )
                if current and is_current_json
                else None,
                planned=current_json.get("rounds") if current and is_current_json else None,
            )
            snap.runs.append(view)
            if current:
                snap.current = view
        snap.run_id = run.get("run_id") or (current_json.get("run_id") if is_current_json else None)
        return snap

    def run_dirs(self) -> list[Path]:
        runs = self.directory / RUNS_DIR
        return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []

    def stats_path(self, run: RunView | None) -> Path | None:
        """The selected run's own ``stats.json`` if it has one, else the newest ``fedrad-server stats`` result."""
        if run is not None and (run.path / STATS_FILE).is_file():
            return run.path / STATS_FILE
        return latest_file(self.directory / STATS_DIR, STATS_FILE)

    def bench_paths(self) -> list[Path]:
        found = sorted((self.directory / BENCH_DIR).glob(f"*/{BENCH_FILE}"))
        return list(dict.fromkeys([*found, *self.benchmarks]))

    def subtitle(self, snap: Snapshot) -> str:
        cfg = snap.cfg
        server = "server running" if _running(snap) else "server not running"
        if cfg is None:
            return server
        return f"{cfg.address} · strategy {cfg.strategy.name} · {cfg.task.type} · {server}"

    # ------------------------------------------------------------ documents
    def doc_entries(self, run_dirs: list[Path]) -> list[DocEntry]:
        """Every document the page may link to (ids are stable: a run's name, a file's path)."""
        from server.dashboard_files import slug

        entries = []
        for d in run_dirs:
            if published(d, None)[1] is not None:
                entries.append(DocEntry(f"card-{slug(d.name)}", f"model card: {d.name}", None, MARKDOWN, d))
            if (d / "metrics.jsonl").is_file():
                entries.append(
                    DocEntry(f"metrics-{slug(d.name)}", f"metrics.jsonl: {d.name}", d / "metrics.jsonl", PLAIN)
                )
        stats = latest_file(self.directory / STATS_DIR, STATS_FILE)
        if stats is not None:
            entries.append(DocEntry("stats", f"stats.json ({stats.parent.name})", stats, JSON))
        cross = latest_file(self.directory / CROSSVAL_DIR, CROSSVAL_FILE)
        if cross is not None:
            entries.append(DocEntry("crossval", f"crossval.json ({cross.parent.name})", cross, JSON))
        for p in self.bench_paths():
            if p.is_file():
                entries.append(DocEntry(f"bench-{bench_id(p)}", f"benchmark results.json ({p.parent.name})", p, JSON))
        return entries

    def documents_section(self, snap: Snapshot) -> dict:
        entries = self.doc_entries([r.path for r in snap.runs])
        current = snap.current.path if snap.current is not None else None
        # the current run's card and metrics first; other runs' cards are under Past runs
        mine = [e for e in entries if current is not None and (e.run == current or e.path == current / "metrics.jsonl")]
        shown = mine + [e for e in entries if e.run is None and not e.id.startswith("metrics-")]
        links = w.links("documents-links", [(e.label, f"/doc/{e.id}") for e in shown])
        return w.section("documents", "Documents", [links], note="read-only files; model cards as export writes them")

    def render_card(self, entry: DocEntry) -> Path | None:
        """The run's model card (Markdown, as ``fedrad-server export`` writes it) for its published model, rendered
        again only when the model, the metrics or the cross-site results changed."""
        from server.model_card import enrolled_sites, model_card
        from shared.modelfile import load_model_file

        run_dir = entry.run
        assert run_dir is not None
        _, src = published(run_dir, None)
        if src is None:
            return None
        cross_path = latest_file(self.directory / CROSSVAL_DIR, CROSSVAL_FILE)
        bench_path = self.benchmarks[0] if self.benchmarks else None
        key = tuple(signature(p) if p else None for p in (src, run_dir / "metrics.jsonl", cross_path, bench_path))
        key = (str(src), *key)
        hit = self._rendered.get(entry.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            loaded = load_model_file(src)
            cross = self.files.json_object(cross_path) if cross_path else None
            if cross and cross.get("weights_sha256") != loaded.weights_sha256:
                cross = None  # cross-site results of another model
            bench = self.files.json_object(bench_path) if bench_path else None
            what = {src.name: "FedRad model file (load with shared.modelfile.load_model_file)"}
            body = model_card(loaded, run_dir, what, enrolled_sites(self.directory), bench, cross)
        except Exception as exc:  # noqa: BLE001 - the document says why there is no card
            body = f"# Model card unavailable\n\n{src}: {type(exc).__name__}: {exc}\n"
        out = self._private_dir() / f"{entry.id}.md"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(out)
        self._rendered[entry.id] = (key, out)
        return out

    def _private_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="fedrad-dashboard-"))
            weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        return self._tmp


def _running(snap: Snapshot) -> bool:
    return bool((snap.status or {}).get("server_running"))


def _guarded(sid: str, title: str, build: Callable[[], dict]) -> dict:
    """``build()``, or the section with an error banner naming what failed (never an exception out of page())."""
    try:
        return build()
    except FileProblem as exc:
        return w.section(sid, title, [w.banner(f"{sid}-error", "error", str(exc))])
    except Exception as exc:  # noqa: BLE001
        return w.section(sid, title, [w.banner(f"{sid}-error", "error", f"{type(exc).__name__}: {exc}")])


# ---------------------------------------------------------------- sites
def _last_answered(run: RunView | None, site: str) -> str | None:
    if run is None:
        return None
    nodes = run.nodes_of(site)
    for row in reversed(run.rows):
        sm = row.get("site_metrics")
        if isinstance(sm, dict) and nodes & set(sm):
            return f"{row.get('time', '?')} (answered round {row['round']})"
    return None


def _last_failure(run: RunView | None, site: str) -> str | None:
    if run is None:
        return None
    for row in reversed(run.rows):
        for f in reversed([f for f in row.get("failures") or [] if isinstance(f, dict)]):
            if run.label(f.get("node")) == site:
                return f"round {row['round']}: {f.get('reason', '')}"
    return None


def sites_section(snap: Snapshot) -> dict:
    title = "Sites"
    st = snap.status
    problems = [w.banner(f"sites-problem-{i}", "error", p) for i, p in enumerate(snap.problems)]
    if st is None:
        return w.section("sites", title, problems or [w.text("sites-none", "No site status.")])
    from server.status import status_problems

    sites, running, run = st["sites"], st["server_running"], snap.current
    online = sum(s["status"] == "online" for s in sites)
    need = snap.cfg.min_sites if snap.cfg is not None else 1
    rnd = f"{run.last_round} / {run.planned or '?'}" if run is not None else "no run"
    tiles = w.tiles(
        "sites-tiles",
        [
            ("enrolled", len(sites)),
            ("online", online if running else "–", ("ok" if online >= need else "warn") if running else None),
            ("round", rnd),
        ],
    )
    certs = status_problems(st)
    if certs:
        level = "error" if any(lv == "error" for lv, _ in certs) else "warn"
        problems.append(w.banner("sites-certificates", level, "\n".join(m for _, m in certs)))
    if not running:
        problems.append(w.banner("sites-server", "info", "The server is not running: online status is unknown."))
    status_level = {"online": "ok", "offline": "warn", "not connected": "warn", "registered": "warn"}
    rows = []
    for s in sites:
        failure = _last_failure(run, s["name"])
        rows.append(
            [
                s["name"],
                w.cell(s["status"], status_level.get(s["status"])),
                s.get("last_seen") or _last_answered(run, s["name"]) or "–",
                s["fingerprint"],
                s["enrolled_at"],
                w.cell(failure, "error") if failure else "–",
            ]
        )
    table = w.table(
        "sites-table",
        ["site", "status", "last seen", "key fingerprint", "enrolled", "last refusal or error (current run)"],
        rows,
        empty="no site enrolled yet: `fedrad-server enroll DIR SITE`",
    )
    return w.section("sites", title, [tiles, *problems, table])
