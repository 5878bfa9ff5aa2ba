"""The generalization benchmark's per-task steps, each asked of the task (:mod:`shared.tasks`).

:mod:`benchmarks.generalization` runs the same arms (pooled, local-only,
federated) for every task; the task says how a test folder becomes cases, how
sites pool, and how a model is scored (classification: ROC AUC; segmentation:
Dice per segment label and their mean, the figures a site reports in federated
evaluation). The first metric is the headline one (summary, verdict, charts).
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.config import DEFAULT_CLASSES, SiteDataConfig
from shared.tasks import TaskSpec
from shared.tasks.base import TaskDataset
from shared.training import TrainConfig, train_model

Dataset = TaskDataset


def metric_names(task: TaskSpec) -> list[str]:
    """The benchmark's metrics for ``task``, headline first: ``auc``, or ``dice-mean`` then ``dice-<label>``."""
    return task.task.score_keys(list(task.outputs))


def load_all(task: TaskSpec, data: Path, labels: Path | None, cache_dir: Path) -> Dataset:
    """All cases of a test-only folder for ``task``: an unseen site, or a training site's separate test export
    (segmentation: the images with a usable DICOM SEG)."""
    classes = list(task.outputs) if task.task.outputs_key == "classes" else list(DEFAULT_CLASSES)
    cfg = SiteDataConfig(data=data, labels=labels, classes=classes, image_size=task.image_size, cache_dir=cache_dir)
    return task.load_site(cfg, data)


def pool(task: TaskSpec, parts: list[Dataset]) -> Dataset:
    """The training sites' training cases as one dataset (the pooled arm)."""
    return task.task.concat(parts)


def train(
    task: TaskSpec,
    data: Dataset,
    epochs: int,
    batch_size: int,
    lr: float,
    augment: float,
    seed: int,
    lr_schedule: str = "constant",
    scanner_augment: float = 0.0,
) -> torch.nn.Module:
    """A fresh model of the task trained centrally for ``epochs`` (the pooled and local-only arms), its learning
    rate following ``lr_schedule`` over the epochs as a federated run's follows it over the rounds
    (``scanner_augment``: for tasks that support it, :mod:`shared.scanner_augment`)."""
    torch.manual_seed(seed)
    model = task.build_model()
    train_model(
        model,
        data,
        TrainConfig.for_task(
            task.task,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            augment=augment,
            seed=seed,
            lr_schedule=lr_schedule,
            scanner_augment=scanner_augment,
        ),
    )
    return model.eval()


def finetune(
    model: torch.nn.Module, data: Dataset, epochs: int, batch_size: int, augment: float, seed: int
) -> torch.nn.Module:
    """A copy of ``model`` tuned on one site's training cases as ``fedrad-site finetune`` does it
    (its learning rate: a tenth of training's, keep what the consortium learned)."""
    import copy

    from client.finetune import FinetuneOptions

    tuned = copy.deepcopy(model)
    train_model(
        tuned,
        data,
        TrainConfig(epochs=epochs, batch_size=batch_size, lr=FinetuneOptions.lr, augment=augment, seed=seed),
    )
    return tuned.eval()


def score(task: TaskSpec, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """``{metric: value}`` of ``model`` on ``data``, keys as :func:`metric_names`."""
    return task.task.score(model, data)


def has_batch_norm(task: TaskSpec) -> bool:
    """Whether the task's model has BatchNorm running statistics (AdaBN has something to re-estimate)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in task.build_model().modules())
