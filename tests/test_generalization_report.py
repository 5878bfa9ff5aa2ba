"""The benchmark report explains exactly the lever rows it shows."""

from __future__ import annotations

from pathlib import Path

from benchmarks.generalization import summarise
from benchmarks.generalization_report import lever_notes, write_report


def _results(models: list[str]) -> dict:
    cols = ["s1 test", "s2 test", "u"]
    cells = {
        m: {c: [0.6 + 0.01 * i, 0.7, 0.65] for c in cols}
        for i, m in enumerate(["pooled", "local s1", "local s2", *models])
    }
    r = summarise(cells, cols, ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    return r | {
        "config": {
            "seeds": 3,
            "rounds": 2,
            "local_epochs": 1,
            "model": "smallcnn",
            "image_size": 32,
            "scanner_augment_lever": 1.0,
            "finetune_epochs": 0,
        },
        "engine": "Flower simulation engine",
        "test_sizes": {"u": 10},
        "seconds": {},
    }


def test_only_the_levers_that_ran_are_explained(tmp_path: Path) -> None:
    plain = _results(["fedavg", "fedbn"])
    assert lever_notes(plain) == []
    both = _results(["fedavg", "fedavg + equalize", "fedavg + scanner-aug", "fedavg + equalize + scanner-aug"])
    notes = " ".join(lever_notes(both))
    assert "+ equalize" in notes and "strength 1.0" in notes and "AdaBN" not in notes
    html = write_report(both, tmp_path).read_text()
    assert "re-imaged as another scanner might" in html and "fedavg + equalize + scanner-aug" in html
    assert "With levers on top" in html  # the best row with levers is a lever row here, and the summary says so


def test_the_model_best_at_the_unseen_site_is_named_when_it_is_not_the_best_at_home(tmp_path: Path) -> None:
    r = _results(["fedavg", "fedavg + equalize"])
    sa = {"s1 test": [0.55, 0.6, 0.6], "s2 test": [0.55, 0.6, 0.6], "u": [0.9, 0.92, 0.91]}
    cols, sites = ["s1 test", "s2 test", "u"], ["s1 test", "s2 test"]
    cells = {m: {c: r["matrix"][m][c]["values"] for c in cols} for m in r["matrix"]} | {"fedavg + scanner-aug": sa}
    r = r | summarise(cells, cols, sites, ["s1", "s2"], ["u"])
    assert r["verdict"]["with_levers"]["best_federated"] == "fedavg + equalize"
    assert r["verdict"]["for_unseen"]["best_federated"] == "fedavg + scanner-aug"
    html = write_report(r, tmp_path).read_text()
    assert "Best federated model at the unseen site(s), <b>fedavg + scanner-aug</b>" in html


def test_the_carried_optimizer_also_runs_on_top_of_both_input_levers_and_singles_can_be_skipped() -> None:
    from benchmarks.generalization import BenchConfig

    cfg = BenchConfig(
        strategies=["fedavgm"],
        rounds=4,
        equalize_lever=True,
        scanner_augment_lever=1.0,
        combined_levers_only=True,
        carry_optimizer_lever=True,
        average_rounds=2,
    )
    assert [v.label for v in cfg.variants()] == ["", "equalize + scanner-aug"]
    rows = [v.row("fedavgm") for v in cfg.federated_variants("fedavgm")]
    assert rows == [
        "fedavgm",
        "fedavgm + equalize + scanner-aug",
        "fedavgm + carried optimizer",
        "fedavgm + equalize + scanner-aug + carried optimizer",
    ]
    last = cfg.federated_variants("fedavgm")[-1]
    assert last.equalize and last.scanner_augment == 1.0 and last.carry_optimizer
    assert last.run_name("fedavgm", 0) == "fedavgm-equalize-scanner-aug-carried-optimizer-seed0"
    assert len(BenchConfig(equalize_lever=True, scanner_augment_lever=1.0).variants()) == 4  # singles by default


def test_a_round_average_longer_than_the_run_is_refused() -> None:
    import pytest

    from benchmarks.generalization import BenchConfig
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="--average-rounds: a number of rounds from 2 to --rounds"):
        BenchConfig(rounds=3, average_rounds=4)
    notes = " ".join(lever_notes(_results(["fedavg", "fedavg + round average"]) | {}))
    assert "mean of its last" in notes
