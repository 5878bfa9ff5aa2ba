"""Small pieces of the segmentation benchmark and site report: task defaults, Dice scoring, overlay case choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.generalization import BenchConfig
from benchmarks.generalization_task import metric_names, score
from shared.config import ConfigError
from shared.tasks.segmentation.dataset import SegDataset, concat_seg_datasets
from shared.tasks.segmentation.report import overlay_cases


def test_bench_config_defaults_per_task() -> None:
    cls = BenchConfig()
    assert (cls.model, cls.batch_size, cls.lr, cls.task_type) == ("smallcnn", 32, 1e-3, "classification")
    seg = BenchConfig(task_type="segmentation", labels=["nodule", "lung"])
    assert (seg.model, seg.batch_size, seg.lr) == ("unet", 8, 1e-2)
    assert seg.run_config("fedavg", 0, "/tmp/x", 2)["task-type"] == "segmentation"
    assert metric_names(seg.task()) == ["dice-mean", "dice-nodule", "dice-lung"]
    assert metric_names(cls.task()) == ["auc"]
    with pytest.raises(ConfigError, match="--labels"):
        BenchConfig(task_type="segmentation")
    with pytest.raises(ConfigError, match="--task"):
        BenchConfig(task_type="boxes")


class _Echo(torch.nn.Module):
    """Predicts the reference masks it was built with: logits +10 inside, -10 outside."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masks[: len(x)].float() * 20 - 10


def test_score_is_dice_per_label_and_their_mean() -> None:
    masks = torch.zeros((4, 2, 8, 8), dtype=torch.bool)
    masks[:, 1, 2:6, 2:6] = True  # lung everywhere, nodule nowhere
    data = SegDataset(images=torch.rand(4, 1, 8, 8), masks=masks, labels=["nodule", "lung"])
    task = BenchConfig(task_type="segmentation", labels=["nodule", "lung"], image_size=8).task()
    assert score(task, _Echo(masks), data) == {"dice-mean": 1.0, "dice-nodule": 1.0, "dice-lung": 1.0}
    wrong = masks.clone()
    wrong[:, 1] = False
    assert score(task, _Echo(wrong), data)["dice-lung"] == 0.0
    pooled = concat_seg_datasets([data, data])
    assert len(pooled) == 8 and pooled.labels == ["nodule", "lung"]


def test_overlay_cases_span_the_dice_range() -> None:
    dice = np.array([[0.9, 0.9], [0.1, 0.1], [0.5, 0.5], [0.7, 0.7], [0.3, 0.3]])
    assert overlay_cases(dice, 3) == [1, 2, 0]  # worst, middle, best
    assert sorted(overlay_cases(dice, 10)) == [0, 1, 2, 3, 4]


def test_model_card_names_dice_for_a_segmentation_benchmark(tmp_path) -> None:  # noqa: ANN001
    from server.model_card import model_card
    from shared.config import PreprocessConfig
    from shared.modelfile import load_model_file, save_model_file
    from shared.tasks import get_task

    path = tmp_path / "seg.pt"
    save_model_file(
        path,
        get_task("segmentation").build_model("unet", 2, 16),
        architecture="unet",
        arch_kwargs={},
        classes=[],
        labels=["nodule", "lung"],
        preprocess=PreprocessConfig(image_size=16),
        threshold=None,
        provenance={"trained_by": "test", "kind": "local"},
    )
    cell = {"mean": 0.9, "sd": 0.0, "n": 1}
    bench = {
        "engine": "sim",
        "config": {"seeds": 1},
        "columns": ["a test"],
        "metric": "dice-mean",
        "matrix": {"fedavg": {"a test": cell}},
        "metric_matrices": {"dice-lung": {"fedavg": {"a test": cell}}},
    }
    card = model_card(load_model_file(path), None, {}, ["a"], benchmark=bench)
    assert "Dice, mean over labels mean" in card and "Dice lung mean" in card and "AUC mean" not in card
