"""``fedrad-site finetune``: adapt the global model to this site, and show whether it helped.

The site's labelled images are split by patient (stratified, seeded) into a
fine-tuning part and a test part *before* anything is trained; the global
model is scored on the test patients, fine-tuned for a few epochs at a small
learning rate on the rest, and scored again on the same patients. Both
figures come with bootstrap 95 % CIs, so a site sees whether the gain is
more than noise. The fine-tuned model is a FedRad model file whose
provenance names the global model it started from; it never leaves the site.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from client.site_options import command_hardware, site_data_config
from shared.cli_support import progress_bar
from shared.config import ConfigError
from shared.modelfile import load_model_file, save_model_file
from shared.tasks import get_task
from shared.training import TrainConfig, seed_everything, train_model


@dataclass
class FinetuneOptions:
    epochs: int = 3
    lr: float = 1e-4  # a tenth of training's: keep what the consortium learned, adjust to this scanner
    augment: float = 1.0
    scanner_augment: float = 0.0  # shared.scanner_augment
    batch_size: int = 32
    test_fraction: float = 0.3
    seed: int = 0
    site_name: str = "local-site"
    n_bootstrap: int = 1000
    device: str | None = None  # None: site.yaml's device (default auto)
    threads: int | None = None  # None: site.yaml's threads (default auto)


def run_finetune(
    model_path: Path,
    out_path: Path,
    opts: FinetuneOptions,
    *,
    config: Path | None = None,
    data: Path | None = None,
    labels: Path | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> dict:
    """Split, score, fine-tune, score again, save; return a JSON-able before/after summary.

    What is scored is the model's task's (:meth:`shared.tasks.Task.local_scores`): AUC and its operating point for
    classification, Dice per segment label for segmentation, each with its bootstrap 95 % CI."""
    base = load_model_file(model_path)
    task = get_task(base.task)
    cfg = site_data_config(
        config,
        data,
        labels,
        ",".join(base.classes) or None,
        None,
        None,
        base.preprocess.image_size,
        cache_dir,
        task=base.task,
    )
    command_hardware(cfg, config, opts.device, opts.threads)
    with progress_bar("Loading DICOM", enabled=show_progress):
        dataset = base.spec.load_site(cfg, Path(cfg.data))  # as the model was trained (e.g. its uncertainty policy)
    if len(dataset) < 4:
        raise ConfigError(
            f"{cfg.data}: {len(dataset)} usable labelled images; fine-tuning needs a few of each "
            "kind (run 'fedrad-site check')"
        )
    try:
        tune, test = task.split(dataset, opts.test_fraction, opts.seed)
    except ValueError as exc:
        raise ConfigError(f"{cfg.data}: cannot hold out test patients for fine-tuning: {exc}") from None

    def score(model: torch.nn.Module) -> dict:
        return task.local_scores(
            model.eval(), test, threshold=base.threshold, n_bootstrap=opts.n_bootstrap, seed=opts.seed
        )

    before = score(base.model)
    model = copy.deepcopy(base.model)
    seed_everything(opts.seed)
    with progress_bar("Fine-tuning", enabled=show_progress) as update:
        cfg_train = TrainConfig.for_task(
            task,
            epochs=opts.epochs,
            batch_size=opts.batch_size,
            lr=opts.lr,
            augment=opts.augment,
            scanner_augment=opts.scanner_augment,
            seed=opts.seed,
        )
        train_model(model, tune, cfg_train, on_epoch=lambda h: update(h["epoch"], opts.epochs))
    after = score(model)
    sha = save_model_file(
        out_path,
        model,
        architecture=base.architecture,
        arch_kwargs=base.arch_kwargs,
        classes=base.classes,
        labels=base.labels or None,
        task=base.task,
        task_options=base.task_options,
        preprocess=base.preprocess,
        threshold=base.threshold,
        provenance={
            "trained_by": opts.site_name,
            "kind": "finetuned",
            "rounds": base.provenance.get("rounds", 0),
            "epochs": opts.epochs,
            "extra": {
                "base_model_sha256": base.weights_sha256,
                "base_trained_by": base.provenance.get("trained_by"),
                "finetune_images": len(tune),
                "test_images": len(test),
                "train_config": cfg_train.to_dict(),
            },
        },
    )
    headline = task.headline_metric
    delta = (
        None
        if before.get(headline) is None or after.get(headline) is None
        else round(after[headline] - before[headline], 4)
    )
    summary = {
        "model_file": str(out_path),
        "weights_sha256": sha,
        "base_model_sha256": base.weights_sha256,
        "finetune_images": len(tune),
        "test_images": len(test),
        "before": before,
        "after": after,
        "headline": headline,
        f"{headline}_change": delta,
    }
    if headline == "auc":  # the name scripts read since before the task seam
        summary["auc_change"] = delta
    if show_progress and console is not None:
        _render(summary, console)
    return summary


def _render(s: dict, console: Console) -> None:
    table = Table(
        title=f"Global model before and after fine-tuning, on {s['test_images']} held-out images of this site",
        title_justify="left",
    )
    for col in ("metric", "global model", "fine-tuned"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in s["before"]:
        b, a = s["before"].get(key), s["after"].get(key)
        fmt = (
            (lambda v: "n/a" if v is None else f"[{v[0]:.3f}, {v[1]:.3f}]")
            if key.endswith("_ci95")
            else (lambda v: "n/a" if v is None else f"{v:.3f}")
        )
        table.add_row(key, fmt(b), fmt(a))
    console.print(table)
    change = s[f"{s['headline']}_change"]
    console.print(
        f"{s['headline']} change {change:+.3f}; fine-tuned model {s['model_file']} (stays at the site)"
        if change is not None
        else f"fine-tuned model {s['model_file']}"
    )
