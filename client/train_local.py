"""``fedrad-site train-local``: a local-only baseline, trained and validated at the site.

Validation is a held-out split stratified by class and grouped by patient, so
no patient is in both; the model's operating threshold is Youden's J on that
split (positive class = the last class), stored in the model file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.cli_support import progress_bar
from shared.config import ConfigError, SiteDataConfig
from shared.metrics import youden_threshold
from shared.modelfile import save_model_file
from shared.models import build_model
from shared.site_data import load_site_dataset
from shared.splits import stratified_group_split
from shared.training import TrainConfig, seed_everything, train_model
from shared.tasks.classification.evaluation import predict_proba


@dataclass
class TrainLocalOptions:
    model: str = "smallcnn"
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    augment: float = 1.0
    scanner_augment: float = 0.0  # shared.scanner_augment; classification only
    val_fraction: float = 0.2
    seed: int = 0
    site_name: str = "local-site"
    threads: int = 1


def run_train_local(
    cfg: SiteDataConfig, opts: TrainLocalOptions, out_path: Path, show_progress: bool = True,
    console: Console | None = None,
) -> dict:
    """Load the site, split, train, pick the threshold, write the model file; return a JSON-able summary."""
    torch.set_num_threads(opts.threads)
    with progress_bar("Loading DICOM", enabled=show_progress) as update:
        data, check = load_site_dataset(cfg, on_progress=update)
    if not check.ok:
        raise ConfigError(f"{cfg.data}: {check.verdict()} (run 'fedrad-site check' for details)")

    if opts.val_fraction > 0:
        train_idx, val_idx = stratified_group_split(data.labels.tolist(), data.groups, opts.val_fraction, opts.seed)
        train, val = data.subset(train_idx), data.subset(val_idx)
    else:
        train, val = data, None

    seed_everything(opts.seed)
    model = build_model(opts.model, len(cfg.classes), cfg.image_size)
    train_cfg = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, augment=opts.augment,
                            scanner_augment=opts.scanner_augment, seed=opts.seed)  # fmt: skip
    started = time.perf_counter()
    history = _train_with_progress(model, train, val, train_cfg, show_progress)
    seconds = time.perf_counter() - started

    threshold = None
    if val is not None and len(cfg.classes) == 2 and len(set(val.labels.tolist())) == 2:
        threshold = youden_threshold(val.labels.numpy(), predict_proba(model, val.images)[:, 1])
    sha = save_model_file(
        out_path, model, architecture=opts.model, arch_kwargs={}, classes=cfg.classes,
        preprocess=cfg.preprocess(), threshold=threshold,
        provenance={
            "trained_by": opts.site_name, "kind": "local", "rounds": 0, "epochs": opts.epochs,
            "extra": {"train_images": len(train), "val_images": len(val) if val is not None else 0,
                      "train_config": train_cfg.to_dict()},
        },
    )
    summary = {
        "model_file": str(out_path), "weights_sha256": sha, "architecture": opts.model,
        "train_images": len(train), "val_images": len(val) if val is not None else 0,
        "train_classes": train.class_counts(), "val_classes": val.class_counts() if val is not None else {},
        "threshold": threshold, "seconds": round(seconds, 2), "history": history,
        "final": history[-1] if history else {},
    }
    if show_progress and console is not None:
        _render_summary(summary, console)
    return summary


def _train_with_progress(model, train, val, train_cfg: TrainConfig, show: bool) -> list[dict]:
    if not show:
        return train_model(model, train, train_cfg, val=val)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("Training", total=train_cfg.epochs, status="")

        def on_epoch(h: dict) -> None:
            status = f"loss {h['loss']:.3f}"
            if h.get("val_auc") is not None:
                status += f"  val AUC {h['val_auc']:.3f}"
            bar.update(task, completed=h["epoch"], status=status)

        return train_model(model, train, train_cfg, val=val, on_epoch=on_epoch)


def _render_summary(summary: dict, console: Console) -> None:
    table = Table(title="Local training", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    final = summary["final"]
    rows = [
        ("training images", summary["train_images"]), ("validation images", summary["val_images"]),
        ("epochs", len(summary["history"])), ("final loss", f"{final.get('loss', float('nan')):.4f}"),
        ("validation AUC", "n/a" if final.get("val_auc") is None else f"{final['val_auc']:.3f}"),
        ("operating threshold", "0.5 (default)" if summary["threshold"] is None else f"{summary['threshold']:.3f}"),
        ("time", f"{summary['seconds']:.1f} s"), ("model file", summary["model_file"]),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
