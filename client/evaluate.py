"""``fedrad-site evaluate``: any FedRad model (local or global) on this site's labelled images.

The model file carries its classes and preprocessing; the site's data is
scanned with exactly those parameters, so the numbers are comparable across
sites. What is measured and reported is the model's task's
(:meth:`shared.tasks.Task.evaluate_local`). The report folder (metrics, plots,
per-case predictions) stays here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from client.site_options import command_hardware, site_data_config
from shared.config import ConfigError
from shared.modelfile import load_model_file
from shared.tasks import get_task


def run_evaluate(
    model_path: Path,
    out_dir: Path,
    *,
    config: Path | None = None,
    data: Path | None = None,
    labels: Path | None = None,
    key: str | None = None,
    label_column: str | None = None,
    cache_dir: Path | None = None,
    n_bootstrap: int = 1000,
    show_progress: bool = True,
    console: Console | None = None,
    explain: int = 0,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    """Evaluate and write the report; returns the metrics dict (also in OUT/metrics.json).

    The model runs on site.yaml's ``device`` / ``threads`` (``device`` / ``threads`` override them)."""
    loaded = load_model_file(model_path)
    cfg = site_data_config(
        config,
        data,
        labels,
        ",".join(loaded.classes) or None,
        key,
        label_column,
        loaded.preprocess.image_size,
        cache_dir,
        task=loaded.task,
    )
    command_hardware(cfg, config, device, threads)
    task = get_task(loaded.task)
    refusal = task.unsupported("explain") if explain else None
    if refusal:
        raise ConfigError(f"--explain: {refusal}; leave it out for this model ({model_path})")
    return task.evaluate_local(
        loaded,
        model_path,
        cfg,
        out_dir,
        n_bootstrap=n_bootstrap,
        show_progress=show_progress,
        console=console,
        explain=explain,
    )
