"""Evaluation reports hold per-case results: every file is owner-only (0600) from creation (issue 21, finding 8).

Written under a permissive umask (0022, the usual default) on purpose: with
plain ``open()`` that gives 0644, readable by every account on the site host.
An older world-readable report in the folder and a symbolic link planted at a
report's name are the two ways a mode could leak in; both are tested.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.metrics import evaluate_predictions
from shared.private_files import private_file
from shared.tasks.classification.report import write_report
from shared.tasks.segmentation.metrics import evaluate_segmentation
from shared.tasks.segmentation.report import write_seg_report


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_classification_report_files_are_0600_and_its_new_folder_0700(tmp_path: Path) -> None:
    out_dir = tmp_path / "new" / "report"
    y = np.arange(40) % 2
    proba = np.stack([1 - y * 0.8 - 0.1, y * 0.8 + 0.1], axis=1)
    m = evaluate_predictions(y, proba, ["normal", "nodule"], n_bootstrap=0)
    paths = write_report(out_dir, m, y, proba, ["normal", "nodule"])
    assert {p.name for p in paths.values()} >= {"predictions.csv", "report.html", "metrics.json", "roc.png"}
    assert {p.name: mode(p) for p in paths.values()} == {p.name: 0o600 for p in paths.values()}
    assert mode(out_dir) == 0o700
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left


def test_segmentation_report_replaces_an_old_readable_file_and_never_follows_a_link(tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    out_dir.mkdir(mode=0o755)  # the user's own folder (`--out .`): its mode is theirs, the files' are not
    old = out_dir / "predictions.csv"
    old.write_text("an older run\n")
    old.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(b"not yours")
    (out_dir / "overlays.png").symlink_to(elsewhere)

    masks = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    masks[:, 0, 4:10, 4:10] = True
    result = evaluate_segmentation(masks, masks, ["lung"], n_bootstrap=0, spacing=[(0.5, 0.5), None, (0.5, 0.5)])
    metrics = {"task": "segmentation", **result.to_json()}
    images = np.random.default_rng(0).random((3, 1, 16, 16)).astype(np.float32)
    paths = write_seg_report(
        out_dir, metrics, result, images, masks.numpy(), masks.numpy(), ["a", "b", "c"], {}, n_overlay=2
    )
    assert {p.name: mode(p) for p in paths.values()} == {p.name: 0o600 for p in paths.values()}
    assert not (out_dir / "overlays.png").is_symlink() and elsewhere.read_bytes() == b"not yours"
    rows = paths["predictions"].read_text().splitlines()
    assert rows[0] == "case,dice_lung,hd95_mm_lung,hd95_px_lung"
    assert rows[1:] == ["a,1.0000,0.000,", "b,1.0000,,0.000", "c,1.0000,0.000,"]  # each case under its own unit
    assert mode(out_dir) == 0o755


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "predictions.csv"
    with pytest.raises(RuntimeError), private_file(target) as fh:
        fh.write("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
