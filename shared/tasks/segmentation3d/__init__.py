"""3D segmentation of CT/MR volumes: a label map per case, patches to train on, sliding windows to predict.

The dataset is :class:`shared.tasks.segmentation3d.dataset.VolumeCases` (memory-mapped volumes, one
label map each), the architectures MONAI's 3D ``unet``, ``segresnet`` and ``dynunet``
(:mod:`~shared.tasks.segmentation3d.models`: background + one softmax channel per segment), the training
batches seeded foreground/background-balanced patches (:mod:`~shared.tasks.segmentation3d.sampling`)
through the one loop (:meth:`Task.train_batches`), the loss Dice + cross entropy
(:func:`~shared.tasks.segmentation3d.evaluation.seg3d_loss`), augmentation intensity only
(:mod:`~shared.tasks.segmentation3d.augment`: no flips, left is not right), inference MONAI's
sliding window with Gaussian blending (:mod:`~shared.tasks.segmentation3d.inference`), the figures Dice
and HD95 in millimetres per segment (:mod:`~shared.tasks.segmentation3d.metrics`).

What leaves the site from an evaluation (:mod:`~shared.tasks.segmentation3d.metric_keys`, the 2D task's
key rules): ``num-examples``, ``loss``, ``dice-mean`` (the headline: macro mean over segments),
``dice-<label>`` with this site's bootstrap interval ``dice-<label>-ci-low/high``, ``hd95-mm-<label>``
with ``hd95-mm-<label>-examples`` (the cases where both masks are non-empty). Never a per-case value.

Consortium settings (``task.patches_per_case``, ``task.foreground`` in consortium.yaml): the patches per
case and epoch (default 4) and the share centred on a segment (default 0.5). The task's image size is the
side of the cubic patch and of the inference window.

torch and MONAI are imported inside the methods (the outbound guard asks this task for its metric keys).
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
    from shared.tasks.segmentation3d.dataset import VolumeCases
    from shared.tasks.segmentation3d.sampling import PatchBatches

SEGMENT_LABEL_PATTERN = r"^[A-Za-z0-9_.]{1,40}$"  # as the 2D task's: labels name metric keys (dice-<label>)
N_BOOTSTRAP = 200  # per-site Dice intervals of a federated evaluation (as the 2D task)
MIN_CASES = 2  # a training part and a held-out part
PATCH_MULTIPLE = 8  # every architecture's four levels halve the patch three times (models._check_size)


class Segmentation3DTask(Task):
    name = "segmentation3d"
    outputs_key = "labels"
    default_model = "unet"
    headline_metric = "dice-mean"
    # no image-dp: DP-SGD clips per-sample gradients of whole images (Opacus over data.images); a patch is not
    # a patient, and per-patient accounting over patches drawn from the same volume is not built.
    # no explain: saliency of a 3D segmentation (per voxel, per label) has no report yet.
    # stats: volumes per segment present and each volume's mean intensity (mean_intensities), read slab by slab.
    # no scanner-augment: its transforms are written for 2D radiographs.
    supports = frozenset({"finetune", "onnx", "stats"})
    label_csv = False  # the labels are the label maps that come with the volumes
    # batch 2 patches (MONAI's 3D tutorials; 4 patches per case make an epoch), AdamW 1e-3 for the small nets
    train_defaults = {"epochs": 50, "batch_size": 2, "lr": 1e-3}
    options = {
        "patches_per_case": ("4", "1", "2", "8", "16", "32"),
        "foreground": ("0.5", "0.33", "0.67", "1"),
        # free values, checked by check_options: the voxel size (mm) and the CT window every site preprocesses to
        "spacing": ("1.5",),
        "window": ("soft_tissue",),
    }
    FREE_OPTIONS = ("spacing", "window")

    def check_options(self, given: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The fixed-choice settings as the base class checks them; ``spacing`` and ``window`` parsed (a bad
        one: ValueError naming it) and kept in their one written form, e.g. ``3x1.5x1.5`` and ``-600/1500``."""
        from shared.tasks.segmentation3d.site import spacing_option, window_option

        fixed = {k: _number_text(v) for k, v in given.items() if k not in self.FREE_OPTIONS}
        base = dict(super().check_options(fixed))
        base["spacing"] = spacing_option(given.get("spacing") or self.options["spacing"][0])
        base["window"] = window_option(given.get("window") or self.options["window"][0])
        return tuple(sorted(base.items()))

    def check_outputs(self, names: list[str]) -> list[str]:
        if not names:
            raise ValueError(
                "a segmentation3d task needs its segment names in label-map order, e.g. labels: [liver, spleen] "
                "(value 1 is the first)"
            )
        names = super().check_outputs(names)
        bad = [x for x in names if not re.match(SEGMENT_LABEL_PATTERN, x) or x == "mean"]
        if bad:
            raise ValueError(
                f"segment labels {bad} must be 1-40 letters, digits, '_' or '.' and not 'mean' "
                "(they name metrics such as dice-<label>)"
            )
        from shared.tasks.segmentation3d.dataset import MAX_LABELS

        if len(names) > MAX_LABELS:
            raise ValueError(f"a uint8 label map holds at most {MAX_LABELS} segments, got {len(names)}")
        return names

    def check_image_size(self, model: str, image_size: int) -> None:
        if image_size < PATCH_MULTIPLE or image_size % PATCH_MULTIPLE:
            raise ValueError(
                f"task.image_size is the side of the cubic patch and must be a multiple of {PATCH_MULTIPLE} for "
                f"{model} (four levels, each halving the patch), e.g. 16, 32, 64 or 96; got {image_size}"
            )

    def model_registry(self) -> Mapping[str, Callable[..., nn.Module]]:
        from shared.tasks.segmentation3d.models import SEG3D_MODEL_BUILDERS

        return SEG3D_MODEL_BUILDERS

    def build_model(self, name: str, num_outputs: int, image_size: int, **kwargs: Any) -> nn.Module:
        from shared.tasks.segmentation3d.models import build_seg3d_model

        return build_seg3d_model(name, num_outputs, image_size, **kwargs)

    def input_shape(self, image_size: int) -> tuple[int, ...]:
        return (1, image_size, image_size, image_size)

    def card_preprocessing(self, options: Mapping[str, str]) -> list[str]:
        from shared.imaging.volume_geometry import CANONICAL
        from shared.imaging.volume_preprocess import WINDOW_PRESETS

        window = options.get("window", self.options["window"][0])
        level_width = WINDOW_PRESETS.get(window) or tuple(float(v) for v in window.split("/"))
        return [
            f"orientation: {CANONICAL} patient coordinates, array axes (S, P, L): axis 0 towards Superior, 1 towards "
            "Posterior, 2 towards the patient's Left (any acquisition is reoriented, never resampled, to this)",
            f"spacing: resampled to {options.get('spacing', self.options['spacing'][0])} mm (S x P x L), trilinear "
            "(label maps nearest neighbour)",
            f"windowing: CT {window} (level {level_width[0]:g} HU, width {level_width[1]:g} HU) to [0, 1]; MR "
            "normalised per volume (0.5th percentile of all voxels to 0, 99.5th of the body to 1)",
        ]

    def describe_output(self) -> str:
        return "a logit map for background and each segment label (softmax; the argmax is the label map)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)  # one class per voxel: background, then the labels in order

    def exported_output(self) -> str:
        return "a probability map per class (background, then each segment label), summing to 1 per voxel"

    def preprocessing_note(self, image_size: int, options: Mapping[str, str]) -> str:
        spacing = str(options.get("spacing") or self.options["spacing"][0]).replace("x", "×")
        window = options.get("window") or self.options["window"][0]
        return (
            f"each series in canonical S-P-L order, resampled to {spacing} mm voxels, CT window {window} "
            f"(MR: normalised per volume), predicted in sliding {image_size}³ windows with Gaussian blending"
        )

    def intended_use(self, outputs: list[str]) -> str:
        return f"the 3D segmentation of {', '.join(outputs)} in CT/MR volumes"

    def summarize(self, metrics: Mapping[str, Any], outputs: list[str]) -> str:
        per_label = ", ".join(
            f"{x} Dice {metrics[f'dice-{x}']:.3f}"
            + (f" HD95 {metrics[k]:.1f} mm" if (k := f"hd95-mm-{x}") in metrics else "")
            for x in outputs
            if f"dice-{x}" in metrics
        )
        return f"mean Dice {metrics.get('dice-mean', float('nan')):.3f}; {per_label}"

    # -- a site's data ----------------------------------------------------------------------------
    def load_site(
        self,
        cfg: SiteDataConfig,
        outputs: list[str],
        source: Path,
        patches_per_case: str = "4",
        foreground: str = "0.5",
        spacing: str = "1.5",
        window: str = "soft_tissue",
    ) -> VolumeCases:
        from dataclasses import replace

        from shared.config import ConfigError
        from shared.tasks.segmentation3d.dataset import PatchSampling
        from shared.tasks.segmentation3d.site import load_volume_cases

        data = load_volume_cases(cfg, list(outputs), spacing=spacing, window=window)
        if len(data) < MIN_CASES:
            raise ConfigError(
                f"{source}: {len(data)} volume(s) of {cfg.data} have a label map with segments {list(outputs)}; "
                f"federated 3D segmentation needs at least {MIN_CASES}"
            )
        sampling = PatchSampling(
            patch_size=int(cfg.image_size), patches_per_case=int(patches_per_case), foreground=float(foreground)
        )
        return replace(data, sampling=sampling)

    def split(self, data: VolumeCases, fraction: float, seed: int) -> tuple[VolumeCases, VolumeCases]:
        from shared.tasks.segmentation3d.dataset import split_volume_cases

        return split_volume_cases(data, fraction, seed)

    # -- training ---------------------------------------------------------------------------------
    def targets(self, data: VolumeCases) -> list:
        return data.label_maps  # per case; training reads patches of them (train_batches)

    def train_batches(self, data: VolumeCases, batch_size: int, pin_memory: bool) -> PatchBatches:
        from shared.tasks.segmentation3d.sampling import PatchBatches

        return PatchBatches(data, batch_size)

    def loss(self, data: VolumeCases, class_weighted: bool) -> Callable:
        from shared.tasks.segmentation3d.evaluation import seg3d_loss

        return seg3d_loss()  # no class weights: the Dice term already weighs each segment equally

    def augment(self, strength: float, scanner: float) -> Callable:
        from shared.tasks.segmentation3d.augment import intensity_augment

        return intensity_augment(strength)

    def validation(self, model: nn.Module, data: VolumeCases) -> dict[str, Any]:
        from shared.tasks.segmentation3d.evaluation import evaluate_cases

        ev = evaluate_cases(model, data, with_hd95=False)
        return {"val_loss": ev.loss, "val_dice": ev.mean_dice}

    # -- evaluation and what may leave the site ---------------------------------------------------
    def site_metrics(self, model: nn.Module, data: VolumeCases, seed: int) -> dict[str, float | int]:
        from shared.tasks.segmentation3d.evaluation import evaluate_cases

        ev = evaluate_cases(model, data)
        result = ev.summary(data.labels, N_BOOTSTRAP, seed)
        out: dict[str, float | int] = {"num-examples": len(data), "loss": ev.loss, "dice-mean": result.mean_dice}
        for label, s in result.per_label.items():
            out[f"dice-{label}"] = s.dice_mean
            if s.dice_ci95 is not None:
                out[f"dice-{label}-ci-low"], out[f"dice-{label}-ci-high"] = s.dice_ci95
            if s.n_hd95_mm:
                out[f"hd95-mm-{label}"] = s.hd95_mm_mean
                out[f"hd95-mm-{label}-examples"] = s.n_hd95_mm
        return out

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        from shared.tasks.segmentation3d.metric_keys import count_key

        return count_key(key, outputs)

    def evaluate_local(self, loaded: Any, model_path: Path, cfg: SiteDataConfig, out_dir: Path, **options: Any) -> dict:
        from shared.tasks.segmentation3d.local_evaluation import evaluate_local

        return evaluate_local(loaded, model_path, cfg, out_dir, **options)

    def local_scores(
        self, model: nn.Module, data: VolumeCases, *, threshold: Any, n_bootstrap: int, seed: int
    ) -> dict[str, Any]:
        from shared.tasks.segmentation3d.evaluation import evaluate_cases

        result = evaluate_cases(model, data, with_loss=False).summary(data.labels, n_bootstrap, seed)
        out: dict[str, Any] = {"dice-mean": result.mean_dice}
        for label, s in result.per_label.items():
            out[f"dice-{label}"], out[f"dice-{label}_ci95"] = s.dice_mean, s.dice_ci95
            out[f"hd95-mm-{label}"], out[f"hd95-mm-{label}_ci95"] = s.hd95_mm_mean, s.hd95_mm_ci95
        return out

    def concat(self, parts: list[VolumeCases]) -> VolumeCases:
        from shared.tasks.segmentation3d.dataset import concat_volume_cases

        return concat_volume_cases(parts)

    def score(self, model: nn.Module, data: VolumeCases) -> dict[str, float]:
        """Dice per label and their mean, without HD95 or intervals (the benchmark's fast figures)."""
        import numpy as np

        from shared.tasks.segmentation3d.evaluation import evaluate_cases

        dice = np.stack([c.dice for c in evaluate_cases(model, data, with_hd95=False, with_loss=False).cases])
        return {
            "dice-mean": float(dice.mean()),
            **{f"dice-{x}": float(dice[:, i].mean()) for i, x in enumerate(data.labels)},
        }

    def score_keys(self, outputs: list[str]) -> list[str]:
        return [f"dice-{x}" for x in ["mean", *outputs]]

    def output_counts(self, data: VolumeCases) -> dict[str, int]:
        present = data.presence().sum(axis=0)
        return {label: int(n) for label, n in zip(data.labels, present, strict=True)}

    def mean_intensities(self, data: VolumeCases) -> np.ndarray:
        """Each volume's mean intensity, read slab by slab (a volume is never held whole for this)."""
        import numpy as np

        from shared.tasks.segmentation3d.dataset import slabs

        means = np.zeros(len(data))
        for i in range(len(data)):
            shape = data.shape(i)
            total = sum(float(data.read_image(i, (z,)).sum(dtype=np.float64)) for z in slabs(shape))
            means[i] = total / max(1, int(np.prod(shape)))
            data.release(i)
        return np.clip(means, 0.0, 1.0)

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        from shared.tasks.segmentation3d.metric_keys import count_key, is_fraction

        if is_fraction(key):
            return (0.0, 1.0)
        return (0.0, float("inf")) if count_key(key) is not False else None

    def per_site(self, key: str) -> bool:
        from shared.tasks.segmentation3d.metric_keys import is_per_site

        return is_per_site(key)

    def example_metrics(self, outputs: list[str]) -> list[str]:
        from shared.tasks.segmentation3d.metric_keys import metric_keys

        return ["num-examples", "loss", *metric_keys(outputs)]


def _number_text(value: Any) -> Any:
    """``1.0`` → ``"1"``, ``"0.50"`` → ``"0.5"``: a number in consortium.yaml matches its choice however written."""
    try:
        return f"{float(str(value).strip()):g}" if value is not None and str(value).strip() else value
    except ValueError:
        return value  # not a number: the base check names it


TASK = Segmentation3DTask()
