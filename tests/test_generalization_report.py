"""The benchmark report explains exactly the lever rows it shows."""

from __future__ import annotations

from pathlib import Path

from deploy.generalization import summarise
from deploy.generalization_report import lever_notes, write_report


def _results(models: list[str]) -> dict:
    cols = ["s1 test", "s2 test", "u"]
    cells = {m: {c: [0.6 + 0.01 * i, 0.7, 0.65] for c in cols} for i, m in enumerate(["pooled", "local s1", "local s2", *models])}
    r = summarise(cells, cols, ["s1 test", "s2 test"], ["s1", "s2"], ["u"])
    return r | {"config": {"seeds": 3, "rounds": 2, "local_epochs": 1, "model": "smallcnn", "image_size": 32,
                           "scanner_augment_lever": 1.0, "finetune_epochs": 0},
                "engine": "Flower simulation engine", "test_sizes": {"u": 10}, "seconds": {}}  # fmt: skip


def test_only_the_levers_that_ran_are_explained(tmp_path: Path) -> None:
    plain = _results(["fedavg", "fedbn"])
    assert lever_notes(plain) == []
    both = _results(["fedavg", "fedavg + equalize", "fedavg + scanner-aug", "fedavg + equalize + scanner-aug"])
    notes = " ".join(lever_notes(both))
    assert "+ equalize" in notes and "strength 1.0" in notes and "AdaBN" not in notes
    html = write_report(both, tmp_path).read_text()
    assert "re-imaged as another scanner might" in html and "fedavg + equalize + scanner-aug" in html
    assert "With levers on top" in html  # the best row with levers is a lever row here, and the summary says so
