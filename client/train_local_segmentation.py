"""``fedrad-site train-local --segments nodule,lung``: a local-only segmentation baseline (UNet on the site's SEGs).

The segmentation counterpart of :mod:`client.train_local`: the export's images
with a usable DICOM SEG are the cases (no label CSV), split by patient into
training and validation (:func:`shared.tasks.segmentation.data.split_seg_dataset`),
trained by the one loop :func:`shared.training.train_model` and
written as a ``task: segmentation`` model file that ``fedrad-site evaluate``
and the consortium read.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from shared.config import ConfigError, SiteDataConfig
from shared.modelfile import save_model_file
from shared.tasks import get_task
from shared.training import TrainConfig, seed_everything, train_model


def run_train_local_segmentation(cfg: SiteDataConfig, labels: list[str], opts, out_path: Path,  # noqa: ANN001
                                 console: Console | None = None) -> dict:  # fmt: skip
    """Load the SEG-labelled cases, split, train, write the model file; return a JSON-able summary.

    ``opts`` is a :class:`client.train_local.TrainLocalOptions` (``augment`` > 0 turns on left-right flips).
    """
    from shared.tasks.segmentation.data import load_seg_dataset, split_seg_dataset

    refusal = get_task("segmentation").unsupported("scanner-augment") if opts.scanner_augment else None
    if refusal:
        raise ConfigError(f"--scanner-augment: {refusal}; leave it out with --segments")
    torch.set_num_threads(opts.threads)
    data, seg = load_seg_dataset(cfg, labels)
    if len(data) < 2:
        raise ConfigError(f"{cfg.data}: {len(data)} image(s) have a usable DICOM SEG with segments {labels} "
                          f"({len(seg.problems)} SEG problem(s)); need at least 2: run `fedrad-site check "
                          f"--data {cfg.data} --segments {','.join(labels)}`")  # fmt: skip
    train, val = data, None
    if opts.val_fraction > 0:
        try:
            train, val = split_seg_dataset(data, opts.val_fraction, opts.seed)
        except ValueError:  # too few patients to split: train on all, no validation figures
            train, val = data, None
    seed_everything(opts.seed)
    task = get_task("segmentation")
    model = task.build_model(opts.model, len(labels), cfg.image_size)
    train_cfg = TrainConfig.for_task(task, epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
                                     augment=opts.augment, seed=opts.seed)

    def on_epoch(h: dict) -> None:
        if console is not None:
            dice = f", val Dice {h['val_dice']:.3f}" if "val_dice" in h else ""
            console.print(f"epoch {h['epoch']}/{opts.epochs}: loss {h['loss']:.3f}{dice}")

    started = time.perf_counter()
    history = train_model(model, train, train_cfg, val=val, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    sha = save_model_file(
        out_path, model, architecture=opts.model, arch_kwargs={}, classes=[], labels=list(labels),
        preprocess=cfg.preprocess(), threshold=None,
        provenance={"trained_by": opts.site_name, "kind": "local", "rounds": 0, "epochs": opts.epochs,
                    "extra": {"train_images": len(train), "val_images": len(val) if val is not None else 0,
                              "train_config": train_cfg.to_dict()}},
    )  # fmt: skip
    summary = {"model_file": str(out_path), "weights_sha256": sha, "architecture": opts.model, "task": "segmentation",
               "labels": list(labels), "train_images": len(train), "val_images": len(val) if val is not None else 0,
               "seconds": round(seconds, 2), "history": history, "final": history[-1] if history else {}}  # fmt: skip
    if console is not None:
        console.print(f"model file {out_path} ({opts.model}, {len(train)} training images, "
                      f"final val Dice {summary['final'].get('val_dice', float('nan')):.3f})")  # fmt: skip
    return summary
