"""The segmentation task at a site: load SEG-labelled cases, train a round, score the held-out patients.

The segmentation counterpart of the classification functions in
:mod:`client.federated`, which dispatches here on the run config's
``task-type``. The same held-out rule applies: one patient-grouped split per
run (seeded by the run's ``seed``), training never sees the held-out patients.

What leaves the site from an evaluation: ``num-examples``, ``loss``,
``dice-mean``, per label ``dice-<label>`` (with this site's bootstrap interval
``dice-<label>-ci-low/high``), ``hd95-<label>`` in pixels and the number of
cases it averages (``hd95-<label>-examples``); keys and their withholding rules
are in :mod:`shared.segmentation_metric_keys` and the outbound guard.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import torch

from shared.config import ConfigError, SiteDataConfig
from shared.segmentation_training import SegDataset, SegTrainConfig, evaluate_segmentation_loss, predict_masks, train_segmentation

N_BOOTSTRAP = 200  # per-site Dice intervals: enough for a 95 % CI of a mean over tens of cases, cheap on a CPU


def load_seg_split(cfg: SiteDataConfig, site_config: Path, labels: list[str], seed: int, fraction: float) -> tuple[SegDataset, SegDataset, bool]:
    """(train, held-out, has_held_out) of the export's cases with a usable DICOM SEG, split by patient."""
    from shared.segmentation_data import load_seg_dataset, split_seg_dataset

    data, report = load_seg_dataset(cfg, list(labels))
    if len(data) < 2:
        raise ConfigError(
            f"{site_config}: {len(data)} image(s) of {cfg.data} have a usable DICOM SEG with segments {labels} "
            f"({len(report.problems)} SEG problem(s)); federated segmentation needs at least 2: run "
            f"`fedrad-site check --config {site_config} --segments {','.join(labels)}`"
        )
    try:
        train, held = split_seg_dataset(data, fraction, seed)
        if len(train) < 2 or len(held) < 1:
            raise ValueError("training part too small")
        return train, held, True
    except ValueError:
        return data, data, False


def seg_train_config(config: Mapping) -> SegTrainConfig:
    """One round's training settings from the round config (``seed + server-round``: every round shuffles anew)."""
    if float(config.get("proximal-mu", 0.0) or 0.0) > 0:
        raise ValueError("FedProx's proximal term is not implemented for segmentation; use fedavg, fedadam, "
                         "fedyogi, fedmedian, fedtrimmedavg, krum or fedbn")  # fmt: skip
    return SegTrainConfig(
        epochs=int(config.get("local-epochs", 1)),
        batch_size=int(config.get("batch-size", 8)),
        lr=float(config.get("lr", 3e-3)),
        flip=float(config.get("augment", 1.0)) > 0,
        seed=int(config.get("seed", 0)) + int(config.get("server-round", 0)),
    )


def seg_train(model: torch.nn.Module, train: SegDataset, config: Mapping) -> dict[str, float | int]:
    """Train ``model`` in place for one round; the round's aggregate training figures."""
    t0 = time.perf_counter()
    history = train_segmentation(model, train, seg_train_config(config))
    return {"num-examples": len(train), "train-loss": float(history[-1]["loss"]), "train-s": time.perf_counter() - t0}


def seg_evaluate(model: torch.nn.Module, held: SegDataset, has_held_out: bool, rnd: int) -> dict[str, float | int]:
    """Loss, Dice and HD95 of ``model`` on the held-out cases, aggregated over them (nothing per case)."""
    from shared.segmentation_metrics import evaluate_segmentation

    loss = evaluate_segmentation_loss(model, held)["val_loss"]
    result = evaluate_segmentation(predict_masks(model, held.images), held.masks, held.labels, n_bootstrap=N_BOOTSTRAP, seed=rnd)
    out: dict[str, float | int] = {"num-examples": len(held), "loss": float(loss), "dice-mean": result.mean_dice,
                                   "held-out": int(has_held_out)}  # fmt: skip
    for label, s in result.per_label.items():
        out[f"dice-{label}"] = s.dice_mean
        if s.dice_ci95 is not None:
            out[f"dice-{label}-ci-low"], out[f"dice-{label}-ci-high"] = s.dice_ci95
        out[f"hd95-{label}-examples"] = s.n_hd95
        if s.hd95_mean is not None:
            out[f"hd95-{label}"] = s.hd95_mean
    return out
