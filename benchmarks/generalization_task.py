"""What the generalization benchmark does per task type: load an unseen site, pool, train, score.

:mod:`benchmarks.generalization` runs the same arms (pooled, local-only,
federated) for every task; only these steps differ. Classification is scored
by ROC AUC; segmentation by Dice per segment label and their mean (the
empty-mask policy of :mod:`shared.tasks.segmentation.metrics`: an empty prediction
of an empty segment scores 1), the same figures a site reports in federated
evaluation. The first metric is the headline one (summary, verdict, charts).
"""

from __future__ import annotations

from pathlib import Path

import torch

from client.federated import Task
from shared.config import SiteDataConfig
from shared.tasks.classification.dataset import SiteDataset, concat_datasets
from shared.tasks.segmentation.dataset import SegDataset, SegTrainConfig, concat_seg_datasets, predict_masks, train_segmentation
from shared.task_models import build_task_model
from shared.training import TrainConfig, train_model
from shared.tasks.classification.evaluation import auc_score

Dataset = SiteDataset | SegDataset


def metric_names(task: Task) -> list[str]:
    """The benchmark's metrics for ``task``, headline first: ``auc``, or ``dice-mean`` then ``dice-<label>``."""
    return [f"dice-{x}" for x in ["mean", *task.labels]] if task.segmentation else ["auc"]


def load_all(task: Task, data: Path, labels: Path | None, cache_dir: Path) -> Dataset:
    """All cases of a test-only folder for ``task``: an unseen site, or a training site's separate test export
    (segmentation: the images with a usable DICOM SEG)."""
    from shared.site_data import load_site_dataset

    cfg = SiteDataConfig(data=data, labels=labels, classes=task.classes or ["normal", "nodule"],
                         image_size=task.image_size, cache_dir=cache_dir)  # fmt: skip
    if task.segmentation:
        from shared.tasks.segmentation.data import load_seg_dataset

        return load_seg_dataset(cfg, task.labels)[0]
    return load_site_dataset(cfg)[0]


def pool(task: Task, parts: list[Dataset]) -> Dataset:
    """The training sites' training cases as one dataset (the pooled arm)."""
    return concat_seg_datasets(parts) if task.segmentation else concat_datasets(parts)


def train(task: Task, data: Dataset, epochs: int, batch_size: int, lr: float, augment: float, seed: int,
          lr_schedule: str = "constant", scanner_augment: float = 0.0) -> torch.nn.Module:  # fmt: skip
    """A fresh model of the task trained centrally for ``epochs`` (the pooled and local-only arms), its learning
    rate following ``lr_schedule`` over the epochs as a federated run's follows it over the rounds
    (``scanner_augment``: classification only, :mod:`shared.scanner_augment`)."""
    torch.manual_seed(seed)
    model = build_task_model(task.task_type, task.model, len(task.outputs), task.image_size)
    if task.segmentation:
        train_segmentation(model, data, SegTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, flip=augment > 0, seed=seed,
                                                          lr_schedule=lr_schedule))
    else:
        train_model(model, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, seed=seed,
                                               lr_schedule=lr_schedule, scanner_augment=scanner_augment))
    return model.eval()


def finetune(model: torch.nn.Module, data: SiteDataset, epochs: int, batch_size: int, augment: float, seed: int) -> torch.nn.Module:
    """A copy of a classification ``model`` tuned on one site's training cases as ``fedrad-site finetune`` does it
    (its learning rate: a tenth of training's, keep what the consortium learned)."""
    import copy

    from client.finetune import FinetuneOptions

    tuned = copy.deepcopy(model)
    train_model(tuned, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=FinetuneOptions.lr, augment=augment, seed=seed))
    return tuned.eval()


def score(task: Task, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """``{metric: value}`` of ``model`` on ``data``, keys as :func:`metric_names`."""
    if not task.segmentation:
        return {"auc": auc_score(model, data)}
    from shared.tasks.segmentation.metrics import dice_per_case

    dice = dice_per_case(predict_masks(model, data.images), data.masks)  # (N, L)
    per_label = {f"dice-{x}": float(dice[:, i].mean()) for i, x in enumerate(data.labels)}
    return {"dice-mean": float(dice.mean()), **per_label}


def has_batch_norm(task: Task) -> bool:
    """Whether the task's model has BatchNorm running statistics (AdaBN has something to re-estimate)."""
    model = build_task_model(task.task_type, task.model, len(task.outputs), task.image_size)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
