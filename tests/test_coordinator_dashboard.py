"""The coordinator's dashboard page model (``server/dashboard.py``), from real consortium folders.

Run folders are written by the real ``RunDir.save_round`` with rows in the format ``server/app.py`` writes (its
``site_metrics_row``, the strategies' ``aggregate_metrics``, ``image_privacy_report``, the norm screen's reasons).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from server.app import site_metrics_row
from server.checkpoints import RunDir, RunTask
from server.coordinator import (
    CURRENT_RUN_JSON,
    SITE_NAMES_JSON,
    CoordinatorError,
    StartOptions,
    update_site_names,
)
from server.coordinator import start as start_session
from server.dashboard import CoordinatorPage
from server.dashboard_runs import failure_kind
from server.enrollment import enroll_site, init_consortium
from server.strategies.dp import image_privacy_report
from server.strategies.metrics import aggregate_metrics
from server.strategies.norm_screen import screen
from server.superlink import NodeStatus
from shared.models import build_model
from shared.tasks import TaskSpec

pytestmark = pytest.mark.timeout(60)
HOSTILE = "<img src=x onerror=alert(1)>"
TASK = RunTask(TaskSpec("classification", ("normal", "nodule"), "smallcnn", 16), "Dash Test", "fedavg", 0)
NODES = {"101": "site-a", "202": "site-b"}


# ---------------------------------------------------------------- building a consortium folder
@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium with two enrolled sites and no run (copied per test that adds files)."""
    c = tmp_path_factory.mktemp("dash") / "consortium"
    init_consortium(c, "Dash Test", "127.0.0.1:9443")
    for name in ("site-a", "site-b"):
        enroll_site(c, name)
    return c


@pytest.fixture
def cdir(consortium: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "consortium"
    shutil.copytree(consortium, dest)
    return dest


def _metrics(rows: dict[str, dict]) -> dict:
    """The round figure the strategies compute from the sites' own metrics."""
    return dict(aggregate_metrics([RecordDict({"metrics": MetricRecord(m)}) for m in rows.values()]))


def app_row(rnd: int, answered: list[str], failures: list[dict], *, dp: bool = False, no_reply: int = 0) -> dict:
    """One metrics.jsonl row as server/app.py builds it (before RunDir adds round, weights_sha256, strategy)."""
    train = {
        int(n): {"num-examples": 20 + int(n) % 7, "train-loss": 0.9 - 0.1 * rnd - int(n) / 10_000, "train-acc": 0.7}
        | ({"dp-epsilon": 2.0 * rnd + int(n) / 1000, "dp-noise-multiplier": 1.1} if dp else {})
        for n in answered
    }
    evaluate = {
        int(n): {
            "num-examples": 8,
            "loss": 0.7 - 0.05 * rnd,
            "auc": 0.6 + 0.1 * rnd - int(n) / 10_000,
            "auc-examples": 8,
        }
        for n in answered
    }
    train_m = _metrics({str(k): v for k, v in train.items()})
    model_bytes = 4_000
    return {
        "time": f"2025-01-01T10:0{rnd}:00+00:00",
        "seconds": 10.0 + rnd,
        "sites_answered": len(answered),
        "sites_failed": len([f for f in failures if not f["reason"].startswith("evaluate: ")]) + no_reply,
        "failures": failures,
        "train": train_m,
        "eval": _metrics({str(k): v for k, v in evaluate.items()}),
        "privacy": image_privacy_report(8.0, 1.0, 1e-5, train_m) if dp else None,
        "start_weights_sha256": "0" * 64,
        "timing": {"wait_sites_s": 0.1, "train_wave_s": 8.0, "aggregate_s": 0.2, "evaluate_wave_s": 1.5},
        "bytes_per_site": {"down": model_bytes * 2, "up": model_bytes, "model": model_bytes},
        "site_metrics": site_metrics_row(train, evaluate),
    }


def write_run(c: Path, name: str, rows: list[dict], *, planned: int = 3, names: dict[str, str] | None = None) -> Path:
    run = RunDir(c / "runs" / name)
    run.prepare(TASK, resume=False)
    torch.manual_seed(0)
    weights = build_model("smallcnn", 2, 16).state_dict()
    for i, row in enumerate(rows, start=1):
        run.save_round(
            i,
            weights,
            task=TASK,
            num_server_rounds=planned,
            metrics=row,
            eval_auc=row["eval"]["auc"],
            privacy=row["privacy"],
        )
    (run.path / SITE_NAMES_JSON).write_text(json.dumps(names if names is not None else NODES))
    return run.path


def refusal(node: str, why: str = HOSTILE) -> dict:
    return {"node": int(node), "reason": f"site error: {why}"}


# ---------------------------------------------------------------- reading the page model
def widgets(page: dict) -> dict[str, dict]:
    return {wd["id"]: wd for s in page["sections"] for wd in s["widgets"]}


def series(widget: dict) -> dict[str, list]:
    return {s["name"]: s["points"] for s in widget["series"]}


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def errors(page: dict) -> list[str]:
    return [wd["text"] for wd in widgets(page).values() if wd["kind"] == "banner" and wd["level"] == "error"]


def table_rows(page: dict, wid: str) -> list[list]:
    return [[c["text"] if isinstance(c, dict) else c for c in r] for r in widgets(page)[wid]["rows"]]


SECTIONS = ["sites", "run", "curves", "site-curves", "runs", "checkpoints", "data", "crossval", "bench", "documents"]


# ---------------------------------------------------------------- tests
def test_an_empty_consortium_renders_every_section(cdir: Path) -> None:
    page = CoordinatorPage(cdir).page()
    assert [s["id"] for s in page["sections"]] == SECTIONS
    assert errors(page) == [] and page["title"] == "Dash Test: FedRad coordinator"
    assert [r[0] for r in table_rows(page, "sites-table")] == ["site-a", "site-b"]
    tiles = {t["label"]: t["value"] for t in widgets(page)["sites-tiles"]["items"]}
    assert tiles == {"enrolled": "2", "online": "–", "round": "no run"}
    assert widgets(page)["runs-table"]["rows"] == [] and "run-none" in widgets(page)
    json.dumps(page, allow_nan=False)  # plain JSON


def test_a_finished_run_shows_sites_curves_failures_and_models(cdir: Path) -> None:
    rows = [
        app_row(1, ["101", "202"], [], dp=True),
        app_row(2, ["101"], [refusal("202"), {"node": 202, "reason": "evaluate: site error: busy"}], dp=True),
        app_row(3, ["101", "202"], [], dp=True, no_reply=1),
    ]
    write_run(cdir, "run-20250101-100000", rows)
    src = CoordinatorPage(cdir)
    src.page()
    t0 = time.perf_counter()
    page = src.page()
    took = time.perf_counter() - t0
    assert errors(page) == [], errors(page)
    w = widgets(page)
    # sites: the most recent refusal as the site stated it, last seen from the rounds it answered
    sites = {r[0]: r for r in table_rows(page, "sites-table")}
    assert sites["site-b"][5] == "round 2: evaluate: site error: busy"
    assert sites["site-a"][5] == "–" and "answered round 3" in sites["site-a"][2]
    assert {t["label"]: t["value"] for t in w["sites-tiles"]["items"]}["round"] == "3 / 3"
    # the current run: who answered round 3, and the one site that did not reply
    last = table_rows(page, "run-last-round")
    assert [r[:2] for r in last] == [["site-a", "answered"], ["site-b", "answered"], ["–", "no reply"]]
    # curves: one point per finished round of the task's headline (AUC: asked of the task), ε under DP
    head = series(w["curve-headline"])
    assert list(head) == ["auc"] and [p[0] for p in head["auc"]] == [1, 2, 3]
    assert head["auc"][0][1] == pytest.approx(rows[0]["eval"]["auc"])
    eps = series(w["curve-epsilon"])["ε"]
    assert [p[1] for p in eps] == [r["privacy"]["epsilon"] for r in rows] and eps[-1][1] > 0
    assert series(w["curve-bytes"])["to the sites"][1] == [2, 8_000 * 1 / 1e6]
    rejected = series(w["curve-rejections"])
    assert [p[1] for p in rejected["site error or refusal"]] == [0, 1, 0]
    assert [p[1] for p in rejected["evaluation"]] == [0, 1, 0] and [p[1] for p in rejected["no reply in time"]] == [
        0,
        0,
        1,
    ]
    # per-site curves, named by site-names.json
    per_site = series(w["site-curve-headline"])
    assert sorted(per_site) == ["site-a", "site-b"] and [p[0] for p in per_site["site-b"]] == [1, 3]
    assert len(series(w["site-curve-train-loss"])["site-a"]) == 3
    # past runs, checkpoints, documents
    ((run,),) = [table_rows(page, "runs-table")]
    assert run[:2] == ["run-20250101-100000", "3/3"] and run[3] == "completed" and run[4] == "latest.pt"
    assert run[2] == f"auc {rows[2]['eval']['auc']:.3f} (round 3)"  # best.pt: the round with the best AUC
    files = {r[0]: r for r in table_rows(page, "checkpoints-table")}
    assert {"round-0001.pt", "round-0003.pt", "best.pt", "latest.pt"} <= set(files)
    assert files["latest.pt"][4].startswith("published") and files["best.pt"][1] == 3
    hrefs = [i["href"] for i in w["documents-links"]["items"]]
    assert hrefs[:2] == ["/doc/card-run-20250101-100000", "/doc/metrics-run-20250101-100000"]
    assert took < 0.5, f"page() took {took:.3f} s"


def test_hostile_strings_pass_through_as_plain_strings(cdir: Path) -> None:
    rows = [app_row(1, ["101"], [refusal("202"), refusal("303", "x</td><script>alert(2)</script>")])]
    write_run(cdir, "run-1", rows, names={**NODES, "303": HOSTILE})
    page = CoordinatorPage(cdir).page()
    last = table_rows(page, "run-last-round")
    assert [HOSTILE, "site error or refusal", "site error: x</td><script>alert(2)</script>"] in last
    assert ["site-b", "site error or refusal", f"site error: {HOSTILE}"] in last
    assert table_rows(page, "sites-table")[1][5] == f"round 1: site error: {HOSTILE}"
    # the page builds no markup of its own: every string with a '<' is one of the hostile inputs, verbatim
    odd = [s for s in strings(page) if "<" in s and HOSTILE not in s and "<script>alert(2)" not in s]
    assert odd == []


def test_a_torn_last_line_is_ignored_and_a_damaged_line_is_named(cdir: Path) -> None:
    run = write_run(cdir, "run-1", [app_row(1, ["101", "202"], []), app_row(2, ["101", "202"], [])], planned=5)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(app_row(3, ["101"], []))[:57])  # round 3 being written
    page = CoordinatorPage(cdir).page()
    assert errors(page) == []
    assert [p[0] for p in series(widgets(page)["curve-headline"])["auc"]] == [1, 2]
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text.replace("\n", "\nnot json\n", 1))
    banners = errors(CoordinatorPage(cdir).page())
    assert any(str(run / "metrics.jsonl") in b and "line(s) 2" in b for b in banners), banners


def test_a_live_run_names_its_round_and_status(cdir: Path) -> None:
    run = write_run(cdir, "run-2", [app_row(1, ["101", "202"], []), app_row(2, ["101", "202"], [])], planned=5)
    write_run(cdir, "run-1", [app_row(1, ["101"], [])], planned=1)
    current = {"run_id": 7, "run_dir": str(run), "status": "running", "rounds": 5}
    (cdir / "state").mkdir(exist_ok=True)
    (cdir / "state" / CURRENT_RUN_JSON).write_text(json.dumps(current))
    page = CoordinatorPage(cdir).page()
    w = widgets(page)
    info = dict(w["run-info"]["items"])
    assert info["run"] == "run-2" and info["round"] == "2 of 5" and info["run id"] == "7"
    assert info["status"].startswith("running (server stopped")  # collect_status: no server process
    assert {t["label"]: t["value"] for t in w["sites-tiles"]["items"]}["round"] == "2 / 5"
    assert [r[0] for r in table_rows(page, "runs-table")] == ["run-1", "run-2"]
    assert table_rows(page, "runs-table")[0][3] == "completed"


def test_broken_files_become_banners_naming_them(cdir: Path) -> None:
    run = write_run(cdir, "run-1", [app_row(1, ["101"], [])])
    (run / "state.json").write_text("{torn")
    (run / SITE_NAMES_JSON).write_text("[1, 2]")
    stats = cdir / "stats" / "run-x" / "stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text("nope")
    bench = cdir / "benchmarks" / "b1" / "results.json"
    bench.parent.mkdir(parents=True)
    bench.write_text(json.dumps({"hello": 1}))
    page = CoordinatorPage(cdir).page()  # never raises
    assert [s["id"] for s in page["sections"]] == SECTIONS
    found = " | ".join(errors(page))
    assert str(run / "state.json") in found and str(run / SITE_NAMES_JSON) in found
    assert str(stats) in found and f"{bench}: not a generalization results.json" in found


def test_statistics_cross_site_results_and_benchmarks_are_charted(cdir: Path) -> None:
    from benchmarks.generalization import summarise

    stats = {
        "time": "2025-01-01T09:00:00+00:00",
        "sites": {
            "101": {
                "counts": {"images": 40, "class:normal": 25, "class:nodule": 15, "manufacturer:GE": 40}
                | {f"intensity-bin:{i}": 4 for i in range(10)}
            },
            "202": {"counts": {"images": 30, "class:normal": 30, "manufacturer:Siemens": 30, "intensity-bin:3": 30}},
            "303": {"error": "no reply within 60 s"},
        },
        "names": {"101": "site-a", "202": "site-b", "303": "site-c"},
    }
    path = cdir / "stats" / "run-20250101-090000" / "stats.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stats))
    cols = ["s1 test", "s2 test", "u"]
    cells = {m: {c: [0.6, 0.7, 0.65] for c in cols} for m in ["pooled", "local s1", "local s2", "fedavg"]}
    results = summarise(cells, cols, ["s1 test", "s2 test"], ["s1", "s2"], ["u"]) | {
        "config": {"seeds": 3},
        "engine": "Flower simulation engine",
        "metric": "auc",
    }
    bench = cdir / "elsewhere" / "results.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps(results))
    src = CoordinatorPage(cdir, benchmarks=[bench])
    page = src.page()
    assert errors(page) == []
    w = widgets(page)
    classes = w["data-classes"]
    assert classes["groups"] == ["site-a", "site-b", "site-c"]
    assert {s["name"]: s["values"] for s in classes["series"]} == {"nodule": [15, None, None], "normal": [25, 30, None]}
    assert w["data-intensity"]["groups"][0] == "0.0–0.1" and len(w["data-intensity"]["series"]) == 3
    assert ["site-c", None, "no reply within 60 s"] in table_rows(page, "data-sites")
    summary = next(v for k, v in w.items() if k.startswith("bench-") and k.endswith("-summary"))
    assert summary["columns"] == ["model", "site test sets", "× pooled", "u"]
    assert [r[0] for r in summary["rows"]] == ["pooled", "local s1", "local s2", "fedavg"]
    assert summary["rows"][-1][1] == "0.650 ± 0.050"
    bench_docs = [i["href"] for i in w["documents-links"]["items"] if i["href"].startswith("/doc/bench-")]
    assert bench_docs and all(h.removeprefix("/doc/") in src.doc_entries([]).__repr__() for h in bench_docs)


def test_documents_serve_the_model_card_as_export_renders_it(cdir: Path) -> None:
    pytest.importorskip("shared.dashboard.server")
    write_run(cdir, "run-1", [app_row(1, ["101", "202"], [])], planned=1)
    src = CoordinatorPage(cdir)
    docs = src.documents()
    card = docs["card-run-1"]
    assert card.media_type.startswith("text/markdown")
    body = card.path.read_text()
    assert body.startswith("# Model card: Dash Test global model") and "training sites: site-a, site-b" in body
    assert docs["metrics-run-1"].path == cdir / "runs" / "run-1" / "metrics.jsonl"
    assert src.documents()["card-run-1"].path == card.path  # rendered once, reused while nothing changed
    hrefs = {
        i["href"] for s in src.page()["sections"] for wd in s["widgets"] if wd["kind"] == "links" for i in wd["items"]
    }
    assert {h.removeprefix("/doc/") for h in hrefs} <= set(docs)  # every link points to one of its documents


def test_the_cli_prints_the_page_once_with_json(cdir: Path) -> None:
    from typer.testing import CliRunner

    from server.cli import app

    res = CliRunner().invoke(app, ["dashboard", str(cdir), "--json"])
    assert res.exit_code == 0, res.output
    page = json.loads(res.stdout)
    assert [s["id"] for s in page["sections"]] == SECTIONS
    res = CliRunner().invoke(app, ["dashboard", str(cdir / "nothing"), "--json"])
    assert res.exit_code == 2


def test_the_coordinator_names_node_ids_in_the_run_folder(tmp_path: Path) -> None:
    nodes = [NodeStatus(101, "site-a", "online", "", ""), NodeStatus(202, "site-b", "registered", "", "")]
    assert update_site_names(tmp_path, nodes) is True
    assert update_site_names(tmp_path, nodes) is False  # unchanged: not rewritten
    assert update_site_names(tmp_path, [NodeStatus(303, "site-a", "online", "", "")]) is True  # a rotated key
    assert json.loads((tmp_path / SITE_NAMES_JSON).read_text()) == {"101": "site-a", "202": "site-b", "303": "site-a"}


def test_failure_reasons_are_sorted_by_who_left_the_reply_out() -> None:
    (ratio,) = [r for r in screen([1.0, 1.1, 50.0], max_ratio=10.0, max_norm=0.0) if r]
    (capped,) = [r for r in screen([1.0, 50.0], max_ratio=0.0, max_norm=5.0) if r]
    assert failure_kind(ratio) == failure_kind(capped) == "norm screen"
    assert failure_kind("site error: code not approved") == "site error or refusal"
    assert failure_kind("evaluate: site error: x") == "evaluation"
    assert failure_kind("metric 'num-examples' must be positive, got 0") == "validation"


def test_start_refuses_a_dashboard_port_that_is_taken(cdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CoordinatorError, match=f"--dashboard-port {port}"):
            start_session(cdir, StartOptions(dashboard_port=port))


def test_silent_sites_are_named_and_the_wave_in_flight_is_shown(cdir: Path) -> None:
    from server.dashboard_runs import RunView, current_run_section

    row = app_row(1, ["101"], [], no_reply=1) | {"round": 1, "no_reply": {"train": [202], "evaluate": []}}
    progress = {"round": 2, "wave": "train", "nodes": [101, 202], "since": "2025-01-01T10:02:00+00:00"}
    run = RunView(cdir / "runs" / "r", {"last_round": 1}, [row], "auc", 3, NODES, "running", [], progress)
    built = {wd["id"]: wd for wd in current_run_section(run, 7)["widgets"]}
    assert built["run-now"]["text"] == "round 2: train wave, asked site-a, site-b, since 2025-01-01T10:02:00+00:00"
    rows = built["run-last-round"]["rows"]
    assert ["site-b", {"text": "no reply", "level": "warn"}, "train: asked, no answer within the round timeout"] in rows
    run.status = "finished:completed"  # a finished run has no wave in flight, whatever progress.json says
    assert "run-now" not in {wd["id"] for wd in current_run_section(run, 7)["widgets"]}
