"""Classification: one label per image (a label CSV joined to the DICOM export), AUC as the headline.

The dataset is :class:`shared.tasks.classification.dataset.SiteDataset`, the
architectures :data:`shared.models.MODEL_BUILDERS`, the loss class-weighted
cross entropy, the figures :mod:`shared.tasks.classification.evaluation`.
torch is imported inside the methods: the outbound guard asks this task for
its metric keys in every light per-message ClientApp process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from shared.config import SiteDataConfig
    from shared.tasks.classification.dataset import SiteDataset

# metric → the count key saying how many cases it was computed over (the outbound guard's rule)
METRIC_COUNTS: dict[str, str] = {
    "train-acc": "num-examples",
    "accuracy": "num-examples",
    "auc": "auc-examples",
    "auc-ci-low": "auc-examples",
    "auc-ci-high": "auc-examples",  # the site's own bootstrap interval of its AUC
}


class ClassificationTask(Task):
    name = "classification"
    outputs_key = "classes"
    default_model = "smallcnn"
    headline_metric = "auc"
    supports = frozenset({"image-dp", "scanner-augment", "stats", "onnx", "explain", "finetune", "infer"})
    infer_result = "findings"

    def check_outputs(self, names: list[str]) -> list[str]:
        names = super().check_outputs(names)
        if len(names) < 2:
            raise ValueError(f"must list at least 2 distinct classes, got {names}")
        return names

    def model_registry(self) -> Mapping[str, Callable[..., nn.Module]]:
        from shared.models import MODEL_BUILDERS

        return MODEL_BUILDERS

    def build_model(self, name: str, num_outputs: int, image_size: int, **kwargs: Any) -> nn.Module:
        from shared.models import build_model

        return build_model(name, num_outputs, image_size, **kwargs)

    def describe_output(self) -> str:
        return "one logit per class (softmax = class probabilities)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)

    def intended_use(self, outputs: list[str]) -> str:
        return f"the classification of radiographs into {', '.join(outputs)} (positive class: {outputs[-1]})"

    def summarize(self, metrics: Mapping[str, Any], outputs: list[str]) -> str:
        nan = float("nan")
        return f"AUC {metrics.get('auc', nan):.3f}, accuracy {metrics.get('accuracy', nan):.3f}"

    def decide(self, proba: np.ndarray, threshold: float | list[float] | None) -> np.ndarray:
        """One class per image: with two classes and a threshold, the positive (last) class when its probability
        reaches it; otherwise the most probable class."""
        import numpy as np

        if proba.shape[1] == 2 and isinstance(threshold, (int, float)):
            pick = (proba[:, 1] >= threshold).astype(np.int64)
        else:
            pick = proba.argmax(axis=1)
        return np.eye(proba.shape[1], dtype=bool)[pick]

    def decision_rule(self, outputs: list[str], threshold: float | list[float] | None) -> str:
        if len(outputs) == 2 and isinstance(threshold, (int, float)):
            return (
                f"{outputs[1]} when its probability >= {threshold:.4g} (the model file's operating threshold), "
                f"else {outputs[0]}"
            )
        return "the most probable class (the model file has no operating threshold)"

    def saliency(self, model: nn.Module, images: torch.Tensor, output: int) -> np.ndarray:
        from shared.tasks.classification.explain import grad_cam_maps

        return grad_cam_maps(model, images, output)

    def explain_outputs(self, proba: np.ndarray, decided: np.ndarray) -> list[int]:
        """Two classes: the positive class (as the evaluation report's Grad-CAM); more: the class decided."""
        import numpy as np

        return [len(proba) - 1] if len(proba) == 2 else [int(np.argmax(decided))]

    def load_site(self, cfg: SiteDataConfig, outputs: list[str], source: Path) -> SiteDataset:
        from shared.config import ConfigError
        from shared.site_data import load_site_dataset

        if list(cfg.classes) != list(outputs):
            raise ConfigError(
                f"{source}: classes {cfg.classes} differ from the consortium's {list(outputs)}; "
                "set 'classes' in site.yaml to the task's list, in the same order"
            )
        data, check = load_site_dataset(cfg)
        n_classes = len(set(data.labels.tolist()))
        if len(data) < 2 or n_classes < 2:
            raise ConfigError(
                f"{source}: cannot train: {len(data)} usable labelled images in {n_classes} class(es); "
                "training needs at least 2 images of 2 classes (run `fedrad-site check`)"
            )
        data.manufacturers = dict(Counter(r.header.manufacturer or "unknown" for r in check.scan.usable))
        return data

    def split(self, data: SiteDataset, fraction: float, seed: int) -> tuple[SiteDataset, SiteDataset]:
        from shared.splits import stratified_group_split

        train, held = stratified_group_split(data.labels.tolist(), data.groups, fraction, seed)
        return data.subset(train.tolist()), data.subset(held.tolist())

    def targets(self, data: SiteDataset) -> torch.Tensor:
        n = len(data.classes)
        if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= n):
            raise ValueError(f"labels must be class indices 0..{n - 1} for classes {data.classes}")
        return data.labels

    def loss(self, data: SiteDataset, class_weighted: bool) -> Callable:
        import torch.nn.functional as F

        from shared.tasks.classification.evaluation import class_weights

        weight = class_weights(data.labels, len(data.classes)) if class_weighted else None
        if weight is None:
            return lambda logits, y: F.cross_entropy(logits, y)
        return lambda logits, y: F.cross_entropy(logits, y, weight=weight.to(logits.device))

    def per_image_loss(self, data: SiteDataset, class_weighted: bool = True) -> Callable:
        """Cross entropy per image times its class weight, never normalised by the batch (DP-SGD)."""
        import torch
        import torch.nn.functional as F

        from shared.tasks.classification.evaluation import class_weights

        weight = class_weights(data.labels, len(data.classes)) if class_weighted else torch.ones(len(data.classes))
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none") * weight.to(y.device)[y]

    def augment(self, strength: float, scanner: float) -> Callable:
        from shared.augment import build_augment

        augment = build_augment(strength, scanner)
        return lambda x, y, gen: (augment(x, gen), y)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == targets).sum()

    def validation(self, model: nn.Module, data: SiteDataset) -> dict[str, Any]:
        from shared.tasks.classification.evaluation import evaluate

        return evaluate(model, data)

    def site_metrics(self, model: nn.Module, data: SiteDataset, seed: int) -> dict[str, float | int]:
        from shared.tasks.classification.evaluation import auc_with_ci, evaluate

        result = evaluate(model, data)
        auc = result["val_auc"]
        out: dict[str, float | int] = {
            "num-examples": len(data),
            "loss": float(result["val_loss"]),
            "accuracy": float(result["val_acc"]),
            "auc": float(auc) if auc is not None else 0.0,
            "auc-examples": len(data) if auc is not None else 0,
        }
        ci = auc_with_ci(model, data, seed=seed) if auc is not None else None
        if ci is not None:  # this site's interval; the server keeps it per site and never averages it
            out["auc-ci-low"], out["auc-ci-high"] = ci[1], ci[2]
        return out

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        if key == "auc-examples":
            return None  # a count itself: the held-out cases an AUC could be computed over
        return METRIC_COUNTS.get(key, False)

    def evaluate_local(self, loaded: Any, model_path: Path, cfg: SiteDataConfig, out_dir: Path, **options: Any) -> dict:
        from shared.tasks.classification.local_evaluation import evaluate_local

        return evaluate_local(loaded, model_path, cfg, out_dir, **options)

    def operating_threshold(self, model: nn.Module, val: SiteDataset) -> float | None:
        """Youden's J on the validation cases (two classes, both present)."""
        from shared.metrics import youden_threshold
        from shared.tasks.classification.evaluation import predict_proba

        if len(val.classes) != 2 or len(set(val.labels.tolist())) != 2:
            return None
        return youden_threshold(val.labels.numpy(), predict_proba(model, val.images)[:, 1])

    def local_scores(
        self, model: nn.Module, data: SiteDataset, *, threshold: float | None, n_bootstrap: int, seed: int
    ) -> dict[str, Any]:
        from shared.metrics import evaluate_predictions
        from shared.tasks.classification.evaluation import predict_proba

        m = evaluate_predictions(
            data.labels.numpy(),
            predict_proba(model, data.images),
            data.classes,
            threshold=threshold,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        return {k: m.get(k) for k in ("auc", "auc_ci95", "sensitivity", "specificity", "accuracy", "balanced_accuracy")}

    def concat(self, parts: list[SiteDataset]) -> SiteDataset:
        from shared.tasks.classification.dataset import concat_datasets

        return concat_datasets(parts)

    def score(self, model: nn.Module, data: SiteDataset) -> dict[str, float]:
        from shared.tasks.classification.evaluation import auc_score

        return {"auc": auc_score(model, data)}

    def output_counts(self, data: SiteDataset) -> dict[str, int]:
        return data.class_counts()

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        return (0.0, 1.0) if key in METRIC_COUNTS else super().metric_bounds(key)

    def per_site(self, key: str) -> bool:
        return key in ("auc-ci-low", "auc-ci-high")

    def example_metrics(self, outputs: list[str]) -> list[str]:
        return ["num-examples", "loss", "accuracy", "auc", "auc-examples", "auc-ci-low", "auc-ci-high"]


TASK = ClassificationTask()
