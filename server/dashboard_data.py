"""The coordinator dashboard's data sections: site data statistics (``fedrad-server stats``), cross-site evaluation
(``fedrad-server crossval``) and generalization benchmark results (``fedrad-bench generalization``).

Each reads one JSON file as its command wrote it; the benchmark's ``results.json`` is read by format (nothing here
imports ``benchmarks/``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from server.crossval_view import metric_cell
from server.dashboard_files import FileCache, FileProblem, fmt, num, slug
from shared.dashboard.widgets import Section, banner, bars, kv, section, table, text

INTENSITY_BINS = 10  # ``intensity-bin:<i>``: the i-th tenth of [0, 1] (client/site_stats.py)


def latest_file(folder: Path, name: str) -> Path | None:
    """``folder/<newest session>/name`` (session folders are named by start time, so by name is by time)."""
    found = sorted(p for p in Path(folder).glob(f"*/{name}") if p.is_file()) if Path(folder).is_dir() else []
    return found[-1] if found else None


# ---------------------------------------------------------------- data statistics
def stats_section(path: Path | None, files: FileCache) -> Section:
    title = "Data statistics"
    if path is None:
        return section(
            "data", title, [text("data-none", "No statistics yet: `fedrad-server stats DIR` asks every site.")]
        )
    try:
        stats = files.json_object(path) or {}
        sites = stats.get("sites") or {}
        if not isinstance(sites, dict):
            raise FileProblem(f"{path}: 'sites' is not an object")
    except FileProblem as exc:
        return section("data", title, [banner("data-error", "error", str(exc))])
    names = stats.get("names") if isinstance(stats.get("names"), dict) else {}
    order = sorted(sites, key=lambda n: str(names.get(n, n)))
    labels = [str(names.get(n, n)) for n in order]
    counts = [c if isinstance(c := (sites[n] or {}).get("counts"), dict) else {} for n in order]

    def keys(prefix: str) -> list[str]:
        return sorted({k.removeprefix(prefix) for c in counts for k in c if k.startswith(prefix)})

    def series(prefix: str) -> list[tuple[str, list]]:  # withheld (below a site's min_count): a gap
        return [(k, [num(c.get(prefix + k)) for c in counts]) for k in keys(prefix)]

    bins = [f"{i / INTENSITY_BINS:.1f}–{(i + 1) / INTENSITY_BINS:.1f}" for i in range(INTENSITY_BINS)]
    errors = [[label, str((sites[n] or {}).get("error"))] for n, label in zip(order, labels, strict=True)]
    widgets = [
        table(
            "data-sites",
            ["site", "images", "answer"],
            [
                [label, num(c.get("images")), e if e != "None" else "counts"]
                for (label, e), c in zip(errors, counts, strict=True)
            ],
            empty="no site answered",
        ),
        bars("data-classes", "Class balance per site", labels, series("class:"), y_label="images", stacked=True),
        bars("data-manufacturers", "Scanner manufacturers per site", labels, series("manufacturer:"), stacked=True),
        bars(
            "data-intensity",
            "Mean image intensity per site (histogram over [0, 1])",
            bins,
            [
                (label, [num(c.get(f"intensity-bin:{i}")) for i in range(INTENSITY_BINS)])
                for label, c in zip(labels, counts, strict=True)
            ],
            y_label="images",
        ),
    ]
    note = f"{path} ({stats.get('time', '?')}); counts below a site's min_count are withheld and left out"
    return section("data", title, widgets, note=note)


# ---------------------------------------------------------------- cross-site evaluation
def crossval_section(path: Path | None, files: FileCache) -> Section:
    title = "Cross-site evaluation"
    if path is None:
        return section(
            "crossval",
            title,
            [text("crossval-none", "No cross-site evaluation yet: `fedrad-server crossval DIR` runs one.")],
        )
    try:
        data = files.json_object(path) or {}
        sites = [str(s) for s in data.get("sites") or []]
        matrix = data.get("matrix") or {}
        if not isinstance(matrix, dict):
            raise FileProblem(f"{path}: 'matrix' is not an object")
    except FileProblem as exc:
        return section("crossval", title, [banner("crossval-error", "error", str(exc))])
    metric = str(data.get("metric", "auc"))
    rows = []
    for model, row in matrix.items():
        row = row if isinstance(row, dict) else {}
        cells = []
        for s in sites:
            c = row.get(s) if isinstance(row.get(s), dict) else {}
            cells.append(str(c["error"])[:80] if "error" in c else metric_cell(c, metric) if c else "–")
        rows.append([str(model), *cells])
    not_shared = data.get("not_shared") if isinstance(data.get("not_shared"), dict) else {}
    widgets = [
        table(
            "crossval-table", ["model", *sites], rows, title=f"{metric} [95 % CI] (n) on each site's held-out patients"
        ),
        kv(
            "crossval-info",
            [
                ("model", data.get("model")),
                ("time", data.get("time")),
                *((f"{k}: local model", f"not shared ({v})") for k, v in not_shared.items()),
            ],
        ),
    ]
    return section("crossval", title, widgets, note=str(path))


# ---------------------------------------------------------------- generalization benchmark
def bench_id(path: Path) -> str:
    """A stable id part for one results.json: its folder's name and a hash of its full path."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
    return f"{slug(Path(path).parent.name)[:40]}-{digest}"


def _mean_sd(cell: Any) -> str:
    """``0.812 ± 0.010`` over seeds (the benchmark's own format); ``–`` where it could not be scored."""
    if not isinstance(cell, dict) or num(cell.get("mean")) is None:
        return "–"
    return f"{fmt(cell['mean'])} ± {fmt(cell.get('sd'))}" if (num(cell.get("n")) or 0) > 1 else fmt(cell["mean"])


def _yes_no(by_site: Any) -> str:
    if not isinstance(by_site, dict):
        return "–"
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in by_site.items()) or "–"


def bench_widgets(path: Path, files: FileCache) -> list[dict]:
    """One benchmark's summary table, cross-site matrix and verdict; a banner if the file is not one."""
    bid = f"bench-{bench_id(path)}"
    try:
        results = files.json_object(path)
        if results is None:
            raise FileProblem(f"{path}: no such file")
        columns = [str(c) for c in results["columns"]]
        models, matrix = results["models"], results["matrix"]
        if not isinstance(models, dict) or not isinstance(matrix, dict):
            raise TypeError("models/matrix")
    except (FileProblem, KeyError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, FileProblem) else f"{path}: not a generalization results.json ({exc})"
        return [banner(f"{bid}-error", "error", reason)]
    metric = str(results.get("metric", "auc"))
    unseen = [c for c in columns if not c.endswith(" test")]
    seeds = (results.get("config") or {}).get("seeds", "?")
    summary = [
        [
            str(m),
            _mean_sd((r or {}).get("site_mean")),
            fmt((r or {}).get("ratio_to_pooled")),
            *(_mean_sd(((r or {}).get("unseen") or {}).get(u)) for u in unseen),
        ]
        for m, r in models.items()
    ]
    grid = [[str(m), *(_mean_sd((row or {}).get(c)) for c in columns)] for m, row in matrix.items()]
    verdict = results.get("verdict") if isinstance(results.get("verdict"), dict) else {}
    return [
        table(
            f"{bid}-summary",
            ["model", "site test sets", "× pooled", *unseen],
            summary,
            title=f"{path.parent.name}: mean {metric} ± sd over {seeds} seed(s), {results.get('engine', '?')}",
        ),
        table(f"{bid}-matrix", ["model", *columns], grid, title="Cross-site matrix: models × test sets"),
        kv(
            f"{bid}-verdict",
            [
                ("best federated", verdict.get("best_federated")),
                ("× pooled", verdict.get("ratio_to_pooled")),
                ("beats local-only on own test sets", _yes_no(verdict.get("beats_local_on_own_test"))),
                ("beats local-only on unseen sites", _yes_no(verdict.get("beats_local_on_unseen"))),
            ],
            title="Verdict",
        ),
    ]


def bench_section(paths: list[Path], files: FileCache) -> Section:
    title = "Generalization benchmark"
    if not paths:
        return section(
            "bench",
            title,
            [
                text(
                    "bench-none",
                    "No benchmark results: put `fedrad-bench generalization` output under DIR/benchmarks/NAME/ "
                    "or give --benchmark results.json.",
                )
            ],
        )
    return section("bench", title, [w for p in paths for w in bench_widgets(p, files)])
