"""Multi-label findings: several yes/no findings per image (CheXpert / MIMIC-CXR labels), macro AUC as the headline.

The consortium names its findings (``task.findings``) and how an uncertain
label trains (``task.uncertain``: ignore, ones, zeros). Each site's label CSV
has one column per finding (:mod:`shared.tasks.multilabel.labels`). The
dataset is :class:`shared.tasks.multilabel.dataset.MultilabelDataset`, the
architectures classification's (:data:`shared.models.MODEL_BUILDERS`, one
output per finding), the loss a masked BCE with per-finding positive weights,
the figures :mod:`shared.tasks.multilabel.evaluation`, the keys a site may send
:mod:`shared.tasks.multilabel.metric_keys` (``min_count`` applies per finding).
torch is imported inside the methods: the outbound guard asks this task for its
metric keys in every light per-message ClientApp process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from shared.config import SiteDataConfig
    from shared.tasks.multilabel.dataset import MultilabelDataset

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")  # CheXpert's U-Ignore, U-Ones, U-Zeros; the first is the default
N_BOOTSTRAP = 200  # per-site AUC intervals in federated evaluation: cheap, enough for a 95 % CI


class MultilabelTask(Task):
    name = "multilabel"
    outputs_key = "findings"
    default_model = "smallcnn"
    headline_metric = "auc-macro"
    supports = frozenset({"scanner-augment", "stats", "onnx", "explain", "finetune", "infer"})
    infer_result = "findings"
    options = {"uncertain": UNCERTAIN_POLICIES}

    def check_outputs(self, names: list[str]) -> list[str]:
        from shared.tasks.multilabel.metric_keys import FINDING, RESERVED

        if not names:
            raise ValueError("a multilabel task needs its findings, e.g. findings: [effusion, nodule, cardiomegaly]")
        names = super().check_outputs(names)
        bad = [x for x in names if not re.fullmatch(FINDING, x) or x in RESERVED]
        if bad:
            raise ValueError(
                f"findings {bad} must be 1-40 letters, digits, '_' or '.' and not {', '.join(sorted(RESERVED))} "
                "(they name metrics such as auc-<finding>; a CSV column 'Pleural Effusion' matches pleural_effusion)"
            )
        return names

    def model_registry(self) -> Mapping[str, Callable[..., nn.Module]]:
        from shared.models import MODEL_BUILDERS

        return MODEL_BUILDERS

    def describe_output(self) -> str:
        return "one logit per finding (sigmoid = that finding's probability; findings are independent)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits)

    def exported_output(self) -> str:
        return "one probability per finding (sigmoid)"

    def intended_use(self, outputs: list[str]) -> str:
        return f"the detection of findings on chest radiographs, each its own yes/no output: {', '.join(outputs)}"

    def summarize(self, metrics: Mapping[str, Any], outputs: list[str]) -> str:
        nan = float("nan")
        per = ", ".join(f"{f} {metrics[f'auc-{f}']:.3f}" for f in outputs if f"auc-{f}" in metrics)
        return f"macro AUC {metrics.get('auc-macro', nan):.3f}, micro AUC {metrics.get('auc-micro', nan):.3f}" + (
            f"; AUC per finding: {per}" if per else ""
        )

    def saliency(self, model: nn.Module, images: torch.Tensor, output: int) -> np.ndarray:
        from shared.tasks.classification.explain import grad_cam_maps

        return grad_cam_maps(model, images, output)  # that finding's own output, as the evaluation report's

    # -- a site's data ----------------------------------------------------------------------------
    def load_site(
        self, cfg: SiteDataConfig, outputs: list[str], source: Path, uncertain: str = "ignore"
    ) -> MultilabelDataset:
        from collections import Counter

        from shared.config import ConfigError
        from shared.tasks.multilabel.data import load_multilabel_site

        if cfg.findings is not None and list(cfg.findings) != list(outputs):
            raise ConfigError(
                f"{source}: findings {cfg.findings} differ from the task's {list(outputs)}; set 'findings' in "
                "site.yaml to the task's list, in the same order (or leave it out)"
            )
        data, check = load_multilabel_site(cfg, list(outputs), uncertain)
        if len(data) < 2 or not check.trainable:
            raise ConfigError(f"{source}: {check.verdict()} (run `fedrad-site check` with findings in site.yaml)")
        data.manufacturers = dict(Counter(r.header.manufacturer or "unknown" for r in check.scan.usable))
        return data

    def split(self, data: MultilabelDataset, fraction: float, seed: int) -> tuple:
        from shared.tasks.multilabel.data import split_multilabel

        return split_multilabel(data, fraction, seed)

    # -- training ---------------------------------------------------------------------------------
    def targets(self, data: MultilabelDataset) -> torch.Tensor:
        from shared.tasks.multilabel.dataset import training_targets

        return training_targets(data.values, data.uncertain)

    def loss(self, data: MultilabelDataset, class_weighted: bool) -> Callable:
        from shared.tasks.multilabel.dataset import nan_masked_bce, positive_weights

        return nan_masked_bce(positive_weights(self.targets(data)) if class_weighted else None)

    def augment(self, strength: float, scanner: float) -> Callable:
        from shared.augment import build_augment

        augment = build_augment(strength, scanner)  # findings are not lateralised: a flip keeps every label
        return lambda x, y, gen: (augment(x, gen), y)

    def validation(self, model: nn.Module, data: MultilabelDataset) -> dict[str, Any]:
        from shared.tasks.multilabel.evaluation import certain_loss, figures

        return {"val_loss": certain_loss(model, data), "val_auc": figures(model, data)["auc_macro"]}

    # -- evaluation and what may leave the site ---------------------------------------------------
    def site_metrics(self, model: nn.Module, data: MultilabelDataset, seed: int) -> dict[str, float | int]:
        from shared.tasks.multilabel.evaluation import site_metrics

        return site_metrics(model, data, seed, N_BOOTSTRAP)

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        from shared.tasks.multilabel.metric_keys import count_key

        return count_key(key, outputs)

    def evaluate_local(self, loaded: Any, model_path: Path, cfg: SiteDataConfig, out_dir: Path, **options: Any) -> dict:
        from shared.tasks.multilabel.local_evaluation import evaluate_local

        return evaluate_local(loaded, model_path, cfg, out_dir, **options)

    def operating_threshold(self, model: nn.Module, val: MultilabelDataset) -> list[float] | None:
        from shared.tasks.multilabel.evaluation import operating_thresholds

        return operating_thresholds(model, val)

    def local_scores(
        self, model: nn.Module, data: MultilabelDataset, *, threshold: Any, n_bootstrap: int, seed: int
    ) -> dict[str, Any]:
        from shared.tasks.multilabel.evaluation import local_scores

        return local_scores(model, data, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed)

    def concat(self, parts: list[MultilabelDataset]) -> MultilabelDataset:
        from shared.tasks.multilabel.dataset import concat_multilabel

        return concat_multilabel(parts)

    def score(self, model: nn.Module, data: MultilabelDataset) -> dict[str, float]:
        from shared.tasks.multilabel.evaluation import score

        return score(model, data)

    def score_keys(self, outputs: list[str]) -> list[str]:
        return ["auc-macro", *(f"auc-{f}" for f in outputs)]

    def output_counts(self, data: MultilabelDataset) -> dict[str, int]:
        """Certain positives per finding."""
        return {f: c["positive"] for f, c in data.counts().items()}

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        from shared.tasks.multilabel.metric_keys import count_key, is_fraction

        if is_fraction(key):
            return (0.0, 1.0)
        return (0.0, float("inf")) if count_key(key) is not False else None

    def per_site(self, key: str) -> bool:
        from shared.tasks.multilabel.metric_keys import is_per_site

        return is_per_site(key)

    def example_metrics(self, outputs: list[str]) -> list[str]:
        from shared.tasks.multilabel.metric_keys import metric_keys

        return ["num-examples", "loss", *metric_keys(outputs)]


TASK = MultilabelTask()
