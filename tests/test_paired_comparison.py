"""The benchmark's seed-by-seed comparisons: differences, their 95 % interval, and what summarise keeps per seed."""

from __future__ import annotations

import math

import pytest

from benchmarks.generalization import summarise
from benchmarks.paired_comparison import SITE_MEAN, paired_difference


def test_a_consistent_small_gain_is_measurable_and_a_noisy_large_one_is_not() -> None:
    steady = paired_difference([0.81, 0.72, 0.90, 0.66, 0.85], [0.80, 0.70, 0.89, 0.64, 0.84])
    assert steady["per_seed"] == [0.01, 0.02, 0.01, 0.02, 0.01] and steady["wins"] == 5
    assert steady["measurable"] and 0 < steady["ci95"][0] < steady["mean"] < steady["ci95"][1]
    noisy = paired_difference([0.9, 0.6, 0.95], [0.7, 0.7, 0.65])  # +0.2, −0.1, +0.3: mean 0.133, wide interval
    assert noisy["mean"] == pytest.approx(0.1333, abs=1e-4) and noisy["wins"] == 2
    # sd 0.2082, t(0.975, 2) = 4.303: half width 0.517
    assert noisy["ci95"] == pytest.approx([0.1333 - 0.5172, 0.1333 + 0.5172], abs=2e-4) and not noisy["measurable"]


def test_undefined_seeds_are_left_out_and_one_seed_is_never_measurable() -> None:
    d = paired_difference([0.8, math.nan, 0.7], [0.6, 0.5, math.nan])
    assert d["per_seed"] == [0.2] and d["n"] == 1 and d["ci95"] is None and not d["measurable"]
    assert paired_difference([math.nan], [0.5])["mean"] is None


def _cells() -> dict:
    """3 seeds; fedbn is fedavg + 0.03 on every site every seed; finetune adds 0.05 at home only."""
    base = {"s1 test": [0.80, 0.70, 0.90], "s2 test": [0.60, 0.75, 0.65], "u": [0.70, 0.60, 0.80]}
    shift = lambda row, d, cols: {c: [v + (d if c in cols else 0) for v in vals] for c, vals in row.items()}  # noqa: E731
    return {
        "pooled": shift(base, 0.05, ("s1 test", "s2 test")),
        "local s1": shift(base, 0.04, ("s1 test",)) | {"s2 test": [0.5, 0.5, 0.5]},
        "local s2": shift(base, -0.10, ("s1 test",)),
        "fedavg": base,
        "fedbn": shift(base, 0.03, ("s1 test", "s2 test")),
        "fedbn + finetune": shift(base, 0.08, ("s1 test", "s2 test")),
    }


def test_summarise_keeps_every_seed_and_pairs_each_lever_with_fedavg_and_the_best_with_each_local() -> None:
    r = summarise(_cells(), ["s1 test", "s2 test", "u"], ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    assert r["matrix"]["fedavg"]["s1 test"]["values"] == [0.8, 0.7, 0.9]
    assert r["models"]["fedbn"]["site_mean"]["values"] == pytest.approx([0.73, 0.755, 0.805])
    assert r["verdict"]["best_federated"] == "fedbn"  # plain strategies only: finetune spends more than the budget
    assert r["verdict"]["with_levers"]["best_federated"] == "fedbn + finetune"
    rows = {(p["model"], p["against"], p["column"]): p for p in r["paired"]}
    gain = rows[("fedbn", "fedavg", SITE_MEAN)]
    assert gain["per_seed"] == [0.03, 0.03, 0.03] and gain["wins"] == 3 and gain["measurable"]
    assert rows[("fedbn", "fedavg", "u")]["mean"] == 0.0 and not rows[("fedbn", "fedavg", "u")]["measurable"]
    assert rows[("fedbn + finetune", "fedbn", SITE_MEAN)]["mean"] == pytest.approx(0.05)  # what the lever added
    assert ("fedbn + finetune", "fedbn", "u") not in rows  # fine-tuning does not act at an unseen site
    home = rows[("fedbn", "local s1", "s1 test")]  # fedbn +0.03 vs local s1 +0.04 at s1: behind by 0.01 every seed
    assert home["mean"] == pytest.approx(-0.01) and home["wins"] == 0 and home["measurable"]
    assert ("fedbn + finetune", "local s1", "s1 test") in rows  # the best with levers is paired with each local too
    assert "for_unseen" not in r["verdict"]  # at the unseen site all tie: the models already named stand


def test_equalisation_is_paired_with_its_own_arm_at_home_and_at_the_unseen_site_and_pooled_stays_the_reference() -> (
    None
):
    base = _cells()
    cells = base | {
        "pooled + equalize": {c: [v + 0.01 for v in vals] for c, vals in base["pooled"].items()},
        "fedavg + equalize": {
            c: [v + (0.02 if c != "u" else -0.04) for v in vals] for c, vals in base["fedavg"].items()
        },
    }
    r = summarise(cells, ["s1 test", "s2 test", "u"], ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    rows = {(p["model"], p["against"], p["column"]): p for p in r["paired"]}
    assert rows[("fedavg + equalize", "fedavg", SITE_MEAN)]["mean"] == pytest.approx(0.02)
    assert rows[("fedavg + equalize", "fedavg", "u")]["mean"] == pytest.approx(-0.04)  # it can cost at the unseen site
    assert rows[("pooled + equalize", "pooled", "u")]["mean"] == pytest.approx(0.01)
    assert r["models"]["pooled"]["ratio_to_pooled"] == 1.0 and r["models"]["pooled + equalize"]["ratio_to_pooled"] > 1.0
    assert r["verdict"]["best_federated"] == "fedbn"  # "pooled + equalize" is a reference, never a federated model
    assert "pooled + equalize" not in {r["verdict"]["with_levers"]["best_federated"]}


def test_two_levers_together_are_paired_with_the_arm_and_with_the_first_lever_alone() -> None:
    base = _cells()
    plus = lambda row, home, away: {c: [v + (away if c == "u" else home) for v in vals] for c, vals in row.items()}  # noqa: E731
    cells = base | {
        "fedavg + equalize": plus(base["fedavg"], 0.02, -0.10),
        "fedavg + scanner-aug": plus(base["fedavg"], 0.00, 0.03),
        "fedavg + equalize + scanner-aug": plus(base["fedavg"], 0.02, 0.05),
    }
    r = summarise(cells, ["s1 test", "s2 test", "u"], ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    rows = {(p["model"], p["against"], p["column"]): p["mean"] for p in r["paired"]}
    assert rows[("fedavg + scanner-aug", "fedavg", "u")] == pytest.approx(0.03)
    assert rows[("fedavg + scanner-aug", "fedavg", SITE_MEAN)] == pytest.approx(0.0)
    both = "fedavg + equalize + scanner-aug"
    assert rows[(both, "fedavg", "u")] == pytest.approx(0.05)
    assert rows[(both, "fedavg + equalize", "u")] == pytest.approx(0.15)  # the augmentation undoes equalisation's cost
    assert rows[(both, "fedavg + equalize", SITE_MEAN)] == pytest.approx(0.0)
    best_unseen = r["verdict"]["for_unseen"]  # neither the best strategy nor the best at home: named on its own
    assert best_unseen["best_federated"] == both and best_unseen["beats_local_on_unseen"] == {"u": True}
    assert rows[(both, "local s1", "u")] == pytest.approx(0.05) and rows[(both, "local s2", "s2 test")] is not None


def test_a_round_average_is_paired_with_the_same_run_without_it() -> None:
    base = _cells()
    plus = lambda row, d: {c: [v + d for v in vals] for c, vals in row.items()}  # noqa: E731
    levered = "fedavg + equalize + carried optimizer"
    cells = base | {
        "fedavg + equalize": plus(base["fedavg"], 0.01),
        levered: plus(base["fedavg"], 0.02),
        f"{levered} + round average": plus(base["fedavg"], 0.05),
    }
    r = summarise(cells, ["s1 test", "s2 test", "u"], ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    rows = {(p["model"], p["against"], p["column"]): p["mean"] for p in r["paired"]}
    for column in (SITE_MEAN, "u"):  # what the last lever adds, against the row with all the others
        assert rows[(f"{levered} + round average", levered, column)] == pytest.approx(0.03)
        assert rows[(f"{levered} + round average", "fedavg", column)] == pytest.approx(0.05)
        assert rows[(levered, "fedavg + equalize", column)] == pytest.approx(0.01)
