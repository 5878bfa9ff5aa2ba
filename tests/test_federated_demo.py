"""``python -m deploy.federated_demo`` (``make demo``): its output folder and its table, without training."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from deploy import federated_demo as demo
from shared.processes import is_running, proc_id
from shared.tasks.classification.dataset import SiteDataset

GLOBAL = "global (3 rounds)"


def _cell(auc, ci=None, n=200, pos=60) -> dict:  # noqa: ANN001
    return {"n": n, "n_per_class": {"normal": n - pos, "nodule": pos}, "auc": auc, "auc_ci95": ci}


def _results() -> dict:
    return {
        GLOBAL: {
            "site-1 test": _cell(0.912, [0.871, 0.948]),
            "site-3 test": _cell(None, None, n=5, pos=0),
            "unseen-1": _cell(0.880, [0.82, 0.93]),
        },
        "local site-1": {
            "site-1 test": _cell(0.850, [0.80, 0.90]),
            "site-3 test": _cell(None, None, n=5, pos=0),
            "unseen-1": _cell(0.700, [0.62, 0.78]),
        },
    }


def _render(results: dict) -> str:
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(demo.render_table(results))
    return buf.getvalue()


# ----------------------------------------------------------------------------- the table


def test_table_cells_show_auc_ci_and_n_and_one_class_as_na() -> None:
    text = _render(_results())
    assert "0.912" in text and "0.87–0.95" in text and "n=200 (60+)" in text
    assert "0.850" in text and "0.80–0.90" in text
    assert text.count(demo.ONE_CLASS) == 2 and "n=5 (0+)" in text
    assert "0.000" not in text  # an undefined AUC is never printed as a number
    assert all(len(line) <= 80 for line in text.splitlines())  # readable in a plain terminal


def test_format_cell_edge_cases() -> None:
    assert demo.format_cell(_cell(None, None, n=7, pos=0), "nodule").splitlines()[0] == "n/a (one class)"
    assert demo.format_cell({"n": 0, "n_per_class": {}, "auc": None, "auc_ci95": None}).startswith("n/a (no images)")
    assert demo.format_cell(_cell(0.9), "nodule").splitlines() == ["0.900", "no CI", "n=200 (60+)"]


def test_summary_line_says_best_at_home_and_unseen_with_ci_overlap() -> None:
    line = demo.summary_line(_results(), GLOBAL, {"local site-1": "site-1 test"}, ["unseen-1"])
    assert "\n" not in line
    assert "at home the global model is best on average (global 0.912 vs each site's own local model 0.850" in line
    assert "CIs overlap at 1 of 1 sites" in line
    assert f"at unseen-1 {GLOBAL} is best (AUC 0.880), next local site-1 at 0.700: CIs do not overlap" in line


def test_summary_line_skips_one_class_sites_and_reports_overlap_at_unseen() -> None:
    r = _results()
    r["local site-3"] = {
        "site-1 test": _cell(0.6, [0.5, 0.7]),
        "site-3 test": _cell(None, None, n=5, pos=0),
        "unseen-1": _cell(0.86, [0.80, 0.91]),
    }
    line = demo.summary_line(r, GLOBAL, {"local site-1": "site-1 test", "local site-3": "site-3 test"}, ["unseen-1"])
    assert "mean over 1 site tests" in line  # site-3's one-class test set is left out, not counted as 0
    assert "next local site-3 at 0.860: CIs overlap, not a measurable difference" in line


def test_score_cell_reuses_the_bootstrap_and_handles_one_class() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    images = torch.rand(40, 1, 4, 4)
    both = SiteDataset(images=images, labels=torch.tensor([0, 1] * 20), classes=["normal", "nodule"])
    cell = demo.score_cell(model, both, seed=0, n_bootstrap=200)
    assert cell["n"] == 40 and cell["n_per_class"] == {"normal": 20, "nodule": 20}
    assert 0.0 <= cell["auc_ci95"][0] <= cell["auc"] <= cell["auc_ci95"][1] <= 1.0
    one = SiteDataset(images=images[:6], labels=torch.zeros(6, dtype=torch.long), classes=["normal", "nodule"])
    cell = demo.score_cell(model, one, seed=0, n_bootstrap=200)
    assert cell["auc"] is None and cell["auc_ci95"] is None and cell["n"] == 6
    assert demo.format_cell(cell, "nodule").startswith(demo.ONE_CLASS)


# ----------------------------------------------------------------------------- the output folder


def _fake_demo(out) -> None:  # noqa: ANN001 - what a finished run leaves behind
    for sub in ("cohort/site-1/dicom", "consortium/runs", "cache", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "consortium" / "consortium.yaml").write_text("name: FedRad Demo\n")
    (out / "federated-demo-results.json").write_text("{}")


def test_second_run_into_the_same_out_clears_the_previous_demo(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "demo-federated"
    assert demo.prepare_out(out) == out.resolve()
    assert (out / demo.MARKER).is_file()
    _fake_demo(out)
    demo.prepare_out(out)  # what `make demo` typed a second time does first
    assert sorted(p.name for p in out.iterdir()) == [demo.MARKER]


def test_a_demo_folder_written_before_the_marker_is_reused(tmp_path) -> None:  # noqa: ANN001
    _fake_demo(tmp_path)
    demo.prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.MARKER]


def test_a_foreign_folder_is_refused_and_left_alone(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "thesis.tex").write_text("keep me")
    with pytest.raises(demo.ForeignFolder, match="not written by this demo"):
        demo.prepare_out(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "keep me"
    _fake_demo(tmp_path)  # the demo's entries beside a foreign file: still foreign
    with pytest.raises(demo.ForeignFolder):
        demo.prepare_out(tmp_path)


def test_leftover_processes_of_a_killed_run_are_stopped_and_a_running_demo_refused(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "demo"
    demo.prepare_out(out)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        ident = proc_id(child.pid)
        assert ident is not None
        # A demo still running there (here: the child stands in for it): refused, nothing touched.
        (out / demo.MARKER).write_text(json.dumps({"pid": ident[0], "start": ident[1]}))
        with pytest.raises(demo.ForeignFolder, match="still running"):
            demo.prepare_out(out)
        assert (out / demo.MARKER).is_file()
        # The demo was killed (its pid is gone) but a server/site it started lives on: stopped, then cleared.
        (out / demo.MARKER).write_text(json.dumps({"pid": os.getpid(), "start": -1}))
        (out / demo.PROCESSES).write_text(json.dumps([list(ident)]))
        demo.prepare_out(out)
        child.wait(timeout=10)
        assert not is_running(ident)
        assert not (out / demo.PROCESSES).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
