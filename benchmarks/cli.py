"""``fedrad-bench``: FedRad's measurements, one command line (also ``python -m benchmarks.cli``).

``generalization`` trains pooled, local-only and federated models and scores every model on every
site; ``scale`` runs N synthetic hospitals on Flower's simulation engine; the other subcommands run
the scripts in ``benchmarks/`` (``overhead``: bench_round_overhead.py, ``privacy``, ``secagg``,
``compression``, ``ingest``, ``ingest-fullsize``, ``training``, ``throughput``, ``levers``, ``scale-sweep``,
``proxy-attacks``, ``audit-append``, ``cache-memory``, ``volume-inference``, ``volume-memory``, ``big-model``, ``pacs-fetch``:
bench_<name>.py; ``pacs-receive``: pacs_receive.py) and pass every argument after the subcommand through to them (``fedrad-bench privacy --help``
shows theirs).

Exit codes as in ``fedrad-server``: 0 success, 1 the answer is "no" (a benchmark stopped),
2 bad invocation or configuration, 3 internal error.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path

import typer

from shared.cli_support import EXIT_NO, cli_app, err, handle_errors, out
from shared.names import name_list

app = cli_app(
    "fedrad-bench",
    "FedRad benchmarks: generalization (pooled vs local vs federated), scale, round overhead, privacy and more.",
)


@app.callback()
def _root() -> None:
    """FedRad benchmarks."""


@app.command()
@handle_errors
def generalization(
    sites: list[Path] = typer.Option(
        ..., "--sites", help="A training site folder (site.yaml, or dicom/ + labels.csv); repeat."
    ),
    unseen: list[Path] = typer.Option(
        [], "--unseen", help="A site that never trains, scored on all its images; repeat."
    ),
    strategies: str = typer.Option("fedavg,fedprox,fedbn,fedadam", help="Federated strategies, comma-separated."),
    seeds: int = typer.Option(3, min=1, help="Repeats with different seeds (splits, initial weights, shuffling)."),
    rounds: int = typer.Option(
        5, min=1, help="Federated rounds; pooled and local models get rounds × local-epochs epochs."
    ),
    local_epochs: int = typer.Option(2, "--local-epochs", min=1),
    image_size: int = typer.Option(64, "--image-size", min=16),
    lr: float = typer.Option(
        0.0, min=0, help="Learning rate; 0 = the task's default (1e-3 classification, 1e-2 segmentation)."
    ),
    lr_schedule: str = typer.Option(
        "constant",
        "--lr-schedule",
        help="Every arm's learning rate over its epochs or rounds: constant, or cosine (decays to near 0 at the end).",
    ),
    augment: float = typer.Option(1.0, min=0),
    cpus: int = typer.Option(2, min=1, help="Ray CPUs: simulated sites that train at once (simulation engine only)."),
    engine: str = typer.Option(
        "simulation",
        "--engine",
        help="Where the federated runs go: simulation (Flower's Ray "
        "engine, fast) or deployment (a TLS SuperLink + one SuperNode per site on 127.0.0.1, "
        "submitted with `flwr run`: the slower final check).",
    ),
    task: str = typer.Option(
        "classification",
        "--task",
        help="classification (AUC), segmentation (Dice per label; "
        "the sites' images need DICOM SEGs, e.g. `fedrad-site synth --task segmentation`), multilabel "
        "(macro AUC and AUC per finding; `fedrad-site synth --task multilabel`) or segmentation3d (Dice per "
        "label on CT/MR volumes with SEG/RTSTRUCT labels, e.g. `fedrad-site synth --modality ct`).",
    ),
    labels: str = typer.Option(
        "nodule,lung",
        "--labels",
        help="Segmentation: the SEG segment names; multilabel: the findings (label CSV columns); comma-separated.",
    ),
    task_options: str = typer.Option(
        "",
        "--task-options",
        help="The task's settings as a consortium sets them under task:, comma-separated name=value, e.g. "
        "segmentation3d's spacing=8,window=soft_tissue,patches_per_case=8 (default: the task's own).",
    ),
    finetune_epochs: int = typer.Option(
        0,
        "--finetune-epochs",
        min=0,
        help="Also score each strategy's model after "
        "this many epochs of `fedrad-site finetune` at each training site (0: off).",
    ),
    equalize_lever: bool = typer.Option(
        False,
        "--equalize-lever",
        help="Also train pooled and each strategy with "
        "per-image histogram equalisation as the model's input layer (model <model>-eq).",
    ),
    scanner_augment_lever: float = typer.Option(
        0.0,
        "--scanner-augment-lever",
        min=0,
        help="Also train pooled and "
        "each strategy with scanner-look augmentation at this strength (e.g. "
        "1.0; with --equalize-lever also both together). 0: off.",
    ),
    server_momentum_lever: float = typer.Option(
        0.0,
        "--server-momentum-lever",
        min=0,
        help="Also run each strategy that takes one (fedbn, fedavgm) with this server momentum (e.g. 0.5). 0: off.",
    ),
    carry_optimizer_lever: bool = typer.Option(
        False,
        "--carry-optimizer-lever",
        help="Also run each strategy with "
        "each site's AdamW moments carried from round to round "
        "(site_optimizer: carry).",
    ),
    average_rounds: int = typer.Option(
        0,
        "--average-rounds",
        min=0,
        help="Also score every federated run's mean "
        "of its last K rounds' global models (average_last_rounds: K; no extra "
        "training). 0: off.",
    ),
    combined_levers_only: bool = typer.Option(
        False,
        "--combined-levers-only",
        help="With --equalize-lever and --scanner-augment-lever: train only both together, not each alone.",
    ),
    out_dir: Path = typer.Option(..., "--out", help="Folder for results.json, report.html and the charts."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json instead of tables."),
) -> None:
    """Pooled vs local-only vs federated: every model on every site's test split and the unseen sites."""
    from benchmarks.generalization import BenchConfig, BenchmarkError, BenchSite, run_benchmark
    from benchmarks.generalization_report import write_report
    from server.strategies import STRATEGIES
    from shared.config import ConfigError

    names = [s.lower() for s in name_list(strategies)]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown or not names:
        raise ConfigError(f"--strategies: unknown {unknown or 'empty list'}; choose from {', '.join(STRATEGIES)}")
    if len(sites) < 2:
        raise ConfigError("--sites: give at least 2 training sites (a federation of one is local training)")
    task_type = task.strip().lower()
    segments = name_list(labels)  # the outputs of a task that names them labels (segmentation); else unused
    cfg = BenchConfig(
        strategies=names,
        seeds=seeds,
        rounds=rounds,
        local_epochs=local_epochs,
        image_size=image_size,
        lr=lr,
        lr_schedule=lr_schedule.strip().lower(),
        augment=augment,
        cpus=cpus,
        task_type=task_type,
        labels=segments,
        task_options=_options(task_options),
        finetune_epochs=finetune_epochs,
        equalize_lever=equalize_lever,
        scanner_augment_lever=scanner_augment_lever,
        server_momentum_lever=server_momentum_lever,
        carry_optimizer_lever=carry_optimizer_lever,
        average_rounds=average_rounds,
        combined_levers_only=combined_levers_only,
        engine=engine.strip().lower(),
    )
    say = (lambda text: err.print(text)) if as_json else (lambda text: out.print(f"[bold]•[/] {text}"))
    try:
        results = run_benchmark(
            [BenchSite.from_dir(s) for s in sites], [BenchSite.from_dir(u) for u in unseen], cfg, out_dir, say=say
        )
    except BenchmarkError as exc:
        err.print(f"[red]benchmark stopped:[/] {exc}")
        raise typer.Exit(EXIT_NO) from None
    report = write_report(results, out_dir.resolve())
    if as_json:
        print(json.dumps(results, indent=2))
        return
    from benchmarks.generalization_view import render_results

    render_results(results)
    out.print(f"report: {report}")


def _options(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` → ``{"a": "1", "b": "2"}``; ConfigError for an item without ``=``."""
    from shared.config import ConfigError

    pairs = {}
    for item in name_list(text):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--task-options: {item!r} is not name=value (e.g. spacing=8)")
        pairs[name.strip()] = value.strip()
    return pairs


@app.command()
@handle_errors
def scale(
    sites: int = typer.Option(..., "--sites", min=2, max=500, help="Number of synthetic hospitals."),
    images_per_site: int = typer.Option(20, "--images-per-site", min=4),
    rounds: int = typer.Option(2, min=1),
    strategy: str = typer.Option("fedavg"),
    cpus: int = typer.Option(2, min=1, help="Ray CPUs: simulated sites that train at once."),
    out_dir: Path = typer.Option(Path("fedrad-simulation"), "--out", help="Cohort, caches and run folders."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """N synthetic sites on Flower's simulation engine (Ray) with FedRad's production apps: time, memory, bytes."""
    from benchmarks.scale import run_scale
    from server.strategies import STRATEGIES
    from shared.config import ConfigError

    if strategy.strip().lower() not in STRATEGIES:
        raise ConfigError(f"--strategy: unknown {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not as_json:
        out.print(
            f"[bold]•[/] {sites} sites × {images_per_site} images, {rounds} round(s) of {strategy} "
            f"on Flower's simulation engine ({cpus} CPUs) …"
        )
    result = run_scale(out_dir, sites, images_per_site, rounds, strategy.strip().lower(), cpus)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    from rich.table import Table

    table = Table("sites", "images", "rounds", "s/round", "total s", "peak RSS MB", "upload B/round", "AUC")
    table.add_row(
        str(result.sites),
        str(result.images),
        str(result.rounds),
        f"{result.seconds_per_round:.1f}",
        f"{result.seconds:.0f}",
        f"{result.peak_rss_mb:.0f}",
        f"{result.upload_bytes_per_round:,}",
        "–" if result.final_auc is None else f"{result.final_auc:.3f}",
    )
    out.print(table)


# Thin subcommands: name -> (module whose main(argv) runs, one line of help). Arguments pass through unparsed.
SCRIPTS: dict[str, tuple[str, str]] = {
    "overhead": (
        "benchmarks.bench_round_overhead",
        "Round overhead on Flower's deployment engine: FedRad vs bare Flower.",
    ),
    "privacy": ("benchmarks.bench_privacy", "AUC cost of differential privacy (site-level or per-image), same run."),
    "secagg": ("benchmarks.bench_secagg", "SecAgg+ vs plain FedAvg: same aggregate, cost in time and bytes."),
    "compression": ("benchmarks.bench_compression", "Upload bytes and model quality: float32 vs fp16 site uploads."),
    "ingest": ("benchmarks.bench_ingest", "Ingest throughput vs a bare pydicom loop, and the cache speed-up."),
    "ingest-fullsize": (
        "benchmarks.bench_ingest_fullsize",
        "Ingest of 2,000-3,000 px radiographs (uncompressed, JPEG 2000) vs bare pydicom, 1 and all workers.",
    ),
    "training": ("benchmarks.bench_training", "Training throughput of train_model vs a bare PyTorch loop."),
    "throughput": (
        "benchmarks.bench_throughput",
        "Training images/s on the site's device, threads and precision: train_model vs a bare PyTorch loop.",
    ),
    "backbones": ("benchmarks.bench_backbones", "Clinical backbones at 224-512 px: size, speed, weight import time."),
    "levers": ("benchmarks.bench_levers", "What the preprocessing and augmentation levers add (pooled model)."),
    "scale-sweep": ("benchmarks.bench_scale", "`scale` at N = 5, 10, 25, 50 sites, with a fit of time against images."),
    "audit-append": (
        "benchmarks.bench_audit_append",
        "Time per audit-log append: unsigned, signed, signed + pin file.",
    ),
    "cache-memory": (
        "benchmarks.bench_cache_memory",
        "Peak RSS of training from the sharded image cache at 10k and 100k images.",
    ),
    "volume-inference": (
        "benchmarks.bench_volume_inference",
        "3D sliding-window inference: FedRad's volume path vs bare MONAI, same network, windows and threads.",
    ),
    "volume-memory": (
        "benchmarks.bench_volume_memory",
        "Peak RSS of 3D segmentation training from the volume cache at 10 and 100 volumes.",
    ),
    "proxy-attacks": (
        "benchmarks.bench_proxy_attacks",
        "The fleet proxy under the review's attacks: memory, connection floods, slow clients during rounds.",
    ),
    "pacs-fetch": (
        "benchmarks.bench_pacs_fetch",
        "fedrad-site fetch of N studies from a local Orthanc by C-GET, C-MOVE and DICOMweb vs DCMTK findscu + getscu.",
    ),
    "pacs-receive": (
        "benchmarks.pacs_receive",
        "Receiving from PACS: storescu to FedRad's storage node vs to DCMTK's storescp, then the ingest.",
    ),
    "big-model": (
        "benchmarks.bench_big_model",
        "A ResNet-50-sized model over TLS and the fleet proxy: round vs raw HTTPS copy, proxy memory, fp16.",
    ),
}

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _run_script(name: str, module: str, argv: list[str]) -> None:
    """Run ``module.main(argv)``; a non-zero return or ``sys.exit`` becomes this command's exit code."""
    main_fn = import_module(module).main
    prog, sys.argv[0] = sys.argv[0], f"fedrad-bench {name}"  # argparse's usage line names the subcommand
    try:
        code = main_fn(argv)
    except SystemExit as exc:  # argparse (--help, bad arguments) and sys.exit("message")
        code = exc.code
    finally:
        sys.argv[0] = prog
    if isinstance(code, str):
        err.print(f"[bold red]error:[/] {code}", highlight=False, soft_wrap=True)
        code = EXIT_NO
    if code:
        raise typer.Exit(int(code))


def _script_command(name: str, module: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        _run_script(name, module, list(ctx.args))

    command.__doc__ = f"{summary} Arguments go to {module.rsplit('.', 1)[-1]}.py (--help lists them)."
    app.command(name, context_settings=_PASS_THROUGH, add_help_option=False)(handle_errors(command))


for _name, (_module, _summary) in SCRIPTS.items():
    _script_command(_name, _module, _summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
