"""``fedrad-site train-local``: a local-only baseline, trained and validated at the site.

Every task the same way: the task loads the site's cases and splits them by
patient into training and validation, so no patient is in both; the one
training loop trains; where the task has one, the model's operating threshold
is chosen on validation (classification: Youden's J, positive class = the
last class) and stored in the model file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.site_options import command_hardware
from shared.cli_support import progress_bar
from shared.config import ConfigError, SiteDataConfig
from shared.modelfile import save_model_file
from shared.start_weights import StartWeights, load_start_weights
from shared.tasks import TaskSpec
from shared.training import TrainConfig, seed_everything, train_model


@dataclass
class TrainLocalOptions:
    model: str = ""  # "" = the task's default architecture
    epochs: int = 15
    batch_size: int = 0  # 0 = the task's default (TrainConfig.for_task)
    lr: float = 0.0  # 0 = the task's default
    augment: float = 1.0
    scanner_augment: float = 0.0  # shared.scanner_augment, for tasks that support it
    val_fraction: float = 0.2
    seed: int = 0
    site_name: str = "local-site"
    threads: int | None = None  # None: site.yaml's threads (default auto: every core)
    device: str | None = None  # None: site.yaml's device (default auto: the GPU when there is one)
    init_weights: Path | None = None  # start from a FedRad model file or a plain state dict (shared.start_weights)


def run_train_local(
    cfg: SiteDataConfig,
    opts: TrainLocalOptions,
    out_path: Path,
    show_progress: bool = True,
    console: Console | None = None,
    task: TaskSpec | None = None,
    config: Path | None = None,
) -> dict:
    """Load the site, split, train, pick the threshold, write the model file; return a JSON-able summary.

    ``task``: what to train (default: classification of ``cfg.classes`` at ``cfg.image_size``); the task says how
    the site's export becomes cases, how they split by patient and what the validation figures are. It trains on
    ``cfg``'s device and threads (``opts`` override them; ``config`` names the site.yaml in errors)."""
    task = task or TaskSpec("classification", tuple(cfg.classes), opts.model or "smallcnn", cfg.image_size)
    kind = task.task
    refusal = kind.unsupported("scanner-augment") if opts.scanner_augment else None
    if refusal:
        raise ConfigError(f"--scanner-augment: {refusal}; leave it out")
    hardware = command_hardware(cfg, config, opts.device, opts.threads)
    seed_everything(opts.seed)  # before anything slow: a model or weights file that cannot work fails at once
    try:
        model = task.build_model()
    except ValueError as exc:  # e.g. an input too small for the architecture
        raise ConfigError(f"--model {task.model} --image-size {task.image_size}: {exc}") from None
    start = _start_from(opts.init_weights, task, model, console if show_progress else None)
    with progress_bar("Loading DICOM", enabled=show_progress):
        data = task.load_site(cfg, Path(cfg.data))
    train, val = data, None
    if opts.val_fraction > 0:
        try:
            train, val = kind.split(data, opts.val_fraction, opts.seed)
        except ValueError:  # too few patients to split: train on all, no validation figures
            train, val = data, None

    defaults = TrainConfig.for_task(kind)
    train_cfg = TrainConfig.for_task(
        kind,
        epochs=opts.epochs,
        batch_size=opts.batch_size or defaults.batch_size,
        lr=opts.lr or defaults.lr,
        augment=opts.augment,
        scanner_augment=opts.scanner_augment,
        seed=opts.seed,
    )
    started = time.perf_counter()
    history = _train_with_progress(model, train, val, train_cfg, show_progress)
    seconds = time.perf_counter() - started

    threshold = kind.operating_threshold(model, val) if val is not None else None
    sha = save_model_file(
        out_path,
        model,
        architecture=task.model,
        arch_kwargs={},
        **task.model_file_outputs(),
        preprocess=cfg.preprocess(),
        threshold=threshold,
        provenance={
            "trained_by": opts.site_name,
            "kind": "local",
            "rounds": 0,
            "epochs": opts.epochs,
            "extra": {
                "train_images": len(train),
                "val_images": len(val) if val is not None else 0,
                "train_config": train_cfg.to_dict(),
                "hardware": {"device": hardware.device, "name": hardware.name, "amp": hardware.amp_dtype},
                **({"init_weights": start.provenance} if start else {}),
            },
        },
    )
    summary = {
        "model_file": str(out_path),
        "weights_sha256": sha,
        "architecture": task.model,
        "task": task.type,
        kind.outputs_key: list(task.outputs),
        "train_images": len(train),
        "val_images": len(val) if val is not None else 0,
        "train_counts": kind.output_counts(train),
        "val_counts": kind.output_counts(val) if val is not None else {},
        "threshold": threshold,
        "seconds": round(seconds, 2),
        "hardware": hardware.to_json(),
        "history": history,
        "final": history[-1] if history else {},
        "init_weights": start.provenance if start else None,
    }
    if show_progress and console is not None:
        _render_summary(summary, console, kind.headline_metric)
    return summary


def _start_from(path: Path | None, task: TaskSpec, model, console: Console | None) -> StartWeights | None:  # noqa: ANN001
    """Load ``--init-weights`` into ``model`` and print where each tensor went; None without the option."""
    if path is None:
        return None
    start = load_start_weights(path, task, model)
    model.load_state_dict(start.state_dict)
    if console is not None:
        for line in start.lines(full_report="the model file's provenance.extra.init_weights"):
            console.print(line, highlight=False, soft_wrap=True)
    return start


def _train_with_progress(model, train, val, train_cfg: TrainConfig, show: bool) -> list[dict]:
    if not show:
        return train_model(model, train, train_cfg, val=val)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("Training", total=train_cfg.epochs, status="")

        def on_epoch(h: dict) -> None:
            status = f"loss {h['loss']:.3f}"
            for key in ("val_auc", "val_dice"):
                if h.get(key) is not None:
                    status += f"  {key.replace('_', ' ')} {h[key]:.3f}"
            bar.update(task, completed=h["epoch"], status=status)

        return train_model(model, train, train_cfg, val=val, on_epoch=on_epoch)


def _threshold_text(threshold: float | list[float] | None) -> str:
    if threshold is None:
        return "0.5 (default)"
    if isinstance(threshold, list):  # one per output (multilabel: per finding)
        return ", ".join(f"{t:.3f}" for t in threshold)
    return f"{threshold:.3f}"


def _render_summary(summary: dict, console: Console, headline: str) -> None:
    table = Table(title="Local training", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    final = summary["final"]
    rows = [
        ("training images", summary["train_images"]),
        ("validation images", summary["val_images"]),
        ("epochs", len(summary["history"])),
        ("final loss", f"{final.get('loss', float('nan')):.4f}"),
        *(
            (f"validation {key.removeprefix('val_')}", f"{final[key]:.3f}")
            for key in ("val_auc", "val_dice")
            if final.get(key) is not None
        ),
        ("operating threshold", _threshold_text(summary["threshold"])),
        ("time", f"{summary['seconds']:.1f} s"),
        ("trained on", summary["hardware"]["device"] + f" ({summary['hardware']['threads']} threads)"),
        ("model file", summary["model_file"]),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
