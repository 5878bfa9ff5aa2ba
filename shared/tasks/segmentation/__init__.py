"""Segmentation: a mask per segment label (DICOM SEG, or PNG/NIfTI masks), mean Dice as the headline.

The dataset is :class:`shared.tasks.segmentation.dataset.SegDataset`, the
architectures :data:`shared.tasks.segmentation.models.SEG_MODEL_BUILDERS`, the
loss soft Dice + BCE over independent sigmoid channels, the figures Dice and
HD95 per label (:mod:`shared.tasks.segmentation.metrics`), their keys
:mod:`shared.tasks.segmentation.metric_keys`. torch and MONAI are imported
inside the methods (the outbound guard asks this task for its metric keys).

What leaves the site from an evaluation: ``num-examples``, ``loss``,
``dice-mean``, per label ``dice-<label>`` (with this site's bootstrap interval
``dice-<label>-ci-low/high``), ``hd95-mm-<label>`` in millimetres over the cases
whose image has a pixel spacing and ``hd95-px-<label>`` in model-input pixels over
the others, each with the number of cases it averages (``hd95-<unit>-<label>-examples``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.tasks.base import Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from shared.config import SiteDataConfig
    from shared.tasks.segmentation.dataset import SegDataset

# Segment labels become metric keys (``dice-<label>``), so no '-' or spaces.
SEGMENT_LABEL_PATTERN = r"^[A-Za-z0-9_.]{1,40}$"
N_BOOTSTRAP = 200  # per-site Dice intervals: enough for a 95 % CI of a mean over tens of cases, cheap on a CPU


class SegmentationTask(Task):
    name = "segmentation"
    outputs_key = "labels"
    default_model = "unet"
    headline_metric = "dice-mean"
    supports = frozenset({"onnx", "stats", "finetune", "infer"})
    infer_result = "segments"  # predict: a sigmoid map per label; decide: >= 0.5, as predict_masks
    label_csv = False  # the labels are the DICOM SEGs (or the PNG/NIfTI mask manifest) of the export
    train_defaults = {"epochs": 20, "batch_size": 8, "lr": 3e-3}  # UNets usually want 1e-3..1e-2

    def check_outputs(self, names: list[str]) -> list[str]:
        if not names:
            raise ValueError(
                "a segmentation task needs its segment names, e.g. labels: [nodule, lung] (the "
                "SegmentLabel of the DICOM SEG segments)"
            )
        names = super().check_outputs(names)
        bad = [x for x in names if not re.match(SEGMENT_LABEL_PATTERN, x) or x == "mean"]
        if bad:
            raise ValueError(
                f"segment labels {bad} must be 1-40 letters, digits, '_' or '.' and not 'mean' "
                "(they name metrics such as dice-<label>)"
            )
        return names

    def model_registry(self) -> Mapping[str, Callable[..., nn.Module]]:
        from shared.tasks.segmentation.models import SEG_MODEL_BUILDERS

        return SEG_MODEL_BUILDERS

    def build_model(self, name: str, num_outputs: int, image_size: int, **kwargs: Any) -> nn.Module:
        from shared.tasks.segmentation.models import build_seg_model

        return build_seg_model(name, num_outputs, image_size, **kwargs)

    def describe_output(self) -> str:
        return "one logit map per segment label (sigmoid ≥ 0.5 = in the mask)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits)  # one independent channel per label (labels overlap)

    def intended_use(self, outputs: list[str]) -> str:
        return f"the segmentation of {', '.join(outputs)} on radiographs"

    def summarize(self, metrics: Mapping[str, Any], outputs: list[str]) -> str:
        per_label = ", ".join(
            f"{x} Dice {metrics[f'dice-{x}']:.3f}"
            + "".join(f" HD95 {metrics[k]:.1f} {u}" for u in ("mm", "px") if (k := f"hd95-{u}-{x}") in metrics)
            for x in outputs
            if f"dice-{x}" in metrics
        )
        return f"mean Dice {metrics.get('dice-mean', float('nan')):.3f}; {per_label}"

    def load_site(self, cfg: SiteDataConfig, outputs: list[str], source: Path) -> SegDataset:
        from shared.config import ConfigError
        from shared.tasks.segmentation.data import load_seg_dataset

        data, report = load_seg_dataset(cfg, list(outputs))
        if len(data) < 2:
            raise ConfigError(
                f"{source}: {len(data)} image(s) of {cfg.data} have a usable DICOM SEG with segments {list(outputs)} "
                f"({len(report.problems)} SEG problem(s)); federated segmentation needs at least 2: run "
                f"`fedrad-site check --config {source} --segments {','.join(outputs)}`"
            )
        return data

    def split(self, data: SegDataset, fraction: float, seed: int) -> tuple[SegDataset, SegDataset]:
        from shared.tasks.segmentation.data import split_seg_dataset

        return split_seg_dataset(data, fraction, seed)

    def targets(self, data: SegDataset) -> torch.Tensor:
        return data.masks

    def loss(self, data: SegDataset, class_weighted: bool) -> Callable:
        from shared.tasks.segmentation.dataset import seg_loss

        loss = seg_loss()
        return lambda logits, masks: loss(logits, masks.float())

    def augment(self, strength: float, scanner: float) -> Callable:
        from shared.tasks.segmentation.dataset import flip_pairs

        return flip_pairs if strength > 0 else (lambda x, y, gen: (x, y))

    def validation(self, model: nn.Module, data: SegDataset) -> dict[str, Any]:
        from shared.tasks.segmentation.dataset import evaluate_segmentation_loss

        return evaluate_segmentation_loss(model, data)

    def site_metrics(self, model: nn.Module, data: SegDataset, seed: int) -> dict[str, float | int]:
        from shared.tasks.segmentation.dataset import evaluate_segmentation_loss, predict_masks
        from shared.tasks.segmentation.metrics import evaluate_segmentation

        loss = evaluate_segmentation_loss(model, data)["val_loss"]
        result = evaluate_segmentation(
            predict_masks(model, data.images),
            data.masks,
            data.labels,
            n_bootstrap=N_BOOTSTRAP,
            seed=seed,
            spacing=data.spacing,
        )
        out: dict[str, float | int] = {"num-examples": len(data), "loss": float(loss), "dice-mean": result.mean_dice}
        for label, s in result.per_label.items():
            out[f"dice-{label}"] = s.dice_mean
            if s.dice_ci95 is not None:
                out[f"dice-{label}-ci-low"], out[f"dice-{label}-ci-high"] = s.dice_ci95
            for unit, mean, n in (("mm", s.hd95_mm_mean, s.n_hd95_mm), ("px", s.hd95_px_mean, s.n_hd95_px)):
                if n:  # a unit no case was measured in is left out, so the round figure is of the sites that had it
                    out[f"hd95-{unit}-{label}-examples"] = n
                if mean is not None:
                    out[f"hd95-{unit}-{label}"] = mean
        return out

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        from shared.tasks.segmentation.metric_keys import count_key

        return count_key(key, outputs)

    def evaluate_local(self, loaded: Any, model_path: Path, cfg: SiteDataConfig, out_dir: Path, **options: Any) -> dict:
        from shared.tasks.segmentation.local_evaluation import evaluate_local

        return evaluate_local(loaded, model_path, cfg, out_dir, **options)

    def local_scores(
        self, model: nn.Module, data: SegDataset, *, threshold: float | None, n_bootstrap: int, seed: int
    ) -> dict[str, Any]:
        from shared.tasks.segmentation.dataset import predict_masks
        from shared.tasks.segmentation.metrics import evaluate_segmentation

        result = evaluate_segmentation(
            predict_masks(model, data.images),
            data.masks,
            data.labels,
            n_bootstrap=n_bootstrap,
            seed=seed,
            spacing=data.spacing,
        )
        out: dict[str, Any] = {"dice-mean": result.mean_dice}
        for label, s in result.per_label.items():
            out[f"dice-{label}"], out[f"dice-{label}_ci95"] = s.dice_mean, s.dice_ci95
        return out

    def concat(self, parts: list[SegDataset]) -> SegDataset:
        from shared.tasks.segmentation.dataset import concat_seg_datasets

        return concat_seg_datasets(parts)

    def score(self, model: nn.Module, data: SegDataset) -> dict[str, float]:
        """Dice per label and their mean (the empty-mask policy of :mod:`shared.tasks.segmentation.metrics`)."""
        from shared.tasks.segmentation.dataset import predict_masks
        from shared.tasks.segmentation.metrics import dice_per_case

        dice = dice_per_case(predict_masks(model, data.images), data.masks)  # (N, L)
        return {
            "dice-mean": float(dice.mean()),
            **{f"dice-{x}": float(dice[:, i].mean()) for i, x in enumerate(data.labels)},
        }

    def score_keys(self, outputs: list[str]) -> list[str]:
        return [f"dice-{x}" for x in ["mean", *outputs]]

    def output_counts(self, data: SegDataset) -> dict[str, int]:
        present = data.masks.flatten(2).any(2).sum(0).tolist() if len(data) else [0] * len(data.labels)
        return {label: int(n) for label, n in zip(data.labels, present, strict=True)}

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        from shared.tasks.segmentation.metric_keys import count_key, is_fraction

        if is_fraction(key):
            return (0.0, 1.0)
        return (0.0, float("inf")) if count_key(key) is not False else None  # HD95 distances and their counts

    def per_site(self, key: str) -> bool:
        from shared.tasks.segmentation.metric_keys import is_per_site

        return is_per_site(key)

    def example_metrics(self, outputs: list[str]) -> list[str]:
        from shared.tasks.segmentation.metric_keys import metric_keys

        return ["num-examples", "loss", *metric_keys(outputs)]


TASK = SegmentationTask()
