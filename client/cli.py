"""``fedrad-site``: the hospital IT and site data-scientist command line.

Each command is a thin layer over a function the tests call directly.
Exit codes: 0 success, 1 the answer is "no" (data cannot train), 2 bad
invocation or configuration, 3 internal error. ``--json`` prints one JSON
object on stdout; progress and tables go to stderr/stdout only without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.cli_support import EXIT_NO, cli_app, err, handle_errors, out, progress_bar
from shared.config import ConfigError
from shared.dashboard.cli_options import HostOpt, TlsCertOpt, TlsKeyOpt, TokenFileOpt
from shared.names import name_list

app = cli_app(
    "fedrad-site",
    "FedRad site client: check a DICOM export, train and evaluate models locally, join a consortium.",
)

ConfigOpt = typer.Option(None, "--config", "-c", help="site.yaml with data, labels, key, classes (flags override it).")
DataOpt = typer.Option(None, "--data", help="Folder of the DICOM export (searched recursively).")
LabelsOpt = typer.Option(None, "--labels", help="CSV with a key column and a label column.")
ClassesOpt = typer.Option(None, "--classes", help="Comma-separated class names, e.g. normal,nodule (last = positive).")
KeyOpt = typer.Option(
    None, "--key", help="Label key column: SOPInstanceUID, StudyInstanceUID, AccessionNumber or path."
)
LabelColOpt = typer.Option(None, "--label-column", help="Label column name in the CSV (default: label).")
SizeOpt = typer.Option(None, "--image-size", help="Model input side in pixels (default 64).")
FindingsOpt = typer.Option(
    None,
    "--findings",
    help="Finding columns of a multi-label CSV, e.g. effusion,nodule (1, 0, -1 uncertain, blank); default: site.yaml's "
    "'findings'.",
)
CacheOpt = typer.Option(None, "--cache-dir", help="Preprocessed-tensor cache (default: beside the data folder).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.")
DeviceOpt = typer.Option(
    None, "--device", help="auto, cpu, cuda or cuda:N (default: site.yaml's device, else auto: the GPU if any)."
)
ThreadsOpt = typer.Option(
    None, "--threads", min=1, help="torch CPU threads (default: site.yaml's threads, else every core)."
)


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, default=str))


@app.command()
@handle_errors
def check(
    config: Path | None = ConfigOpt,
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    classes: str | None = ClassesOpt,
    key: str | None = KeyOpt,
    label_column: str | None = LabelColOpt,
    image_size: int | None = SizeOpt,
    cache_dir: Path | None = CacheOpt,
    as_json: bool = JsonOpt,
    segments: str | None = typer.Option(
        None,
        "--segments",
        help="Segment labels, e.g. nodule,lung: also match "
        "the DICOM SEG files in the export to their images and report problems.",
    ),
    findings: str | None = FindingsOpt,
    volumes: bool = typer.Option(
        False,
        "--volumes",
        help="The export holds CT/MR series (3D segmentation): scan it as series, assembled and cached at "
        "--spacing/--window, with --segments matched from its SEG/RTSTRUCT files (or the NIfTI manifest 'masks').",
    ),
    spacing: str | None = typer.Option(
        None,
        "--spacing",
        help="With --volumes: the consortium's voxel size in mm, e.g. 1.5 or 3x1.5x1.5 (default 1.5).",
    ),
    window: str | None = typer.Option(
        None,
        "--window",
        help="With --volumes: the consortium's CT window, a preset (soft_tissue, lung, bone, brain) or level/width "
        "(default soft_tissue).",
    ),
) -> None:
    """Scan the export, join the labels and say which images are usable, and why the others are not.

    Also says what this site will train on (site.yaml's device, threads and mixed precision)."""
    from client.check_view import render_check, render_hardware
    from client.site_options import site_data_config
    from shared.hardware import site_hardware
    from shared.site_data import check_site

    if (spacing or window) and not volumes:
        raise ConfigError("--spacing and --window describe CT/MR volumes: add --volumes")
    if not (volumes or segments or labels or findings) and config is not None:
        from shared.config import load_yaml_mapping

        values = load_yaml_mapping(config)
        if values.get("labels") is None and not values.get("findings"):  # a segmentation-only site.yaml
            _check_label_free(config, data, cache_dir, as_json)
            return
    cfg = site_data_config(
        config,
        data,
        labels,
        classes,
        key,
        label_column,
        image_size,
        cache_dir,
        task="segmentation3d" if volumes else "segmentation" if segments else "classification",
    )
    hardware = site_hardware(cfg, config or "site.yaml").to_json()  # a GPU asked for but absent: exit 2, here
    if volumes:  # CT/MR series: the path a 3D segmentation run takes, at the consortium's spacing and window
        from client.check_view import render_volumes
        from shared.tasks.segmentation3d.check import check_volume_site

        names = name_list(segments)
        with progress_bar("Scanning series", enabled=not as_json) as update:
            report = check_volume_site(
                cfg,
                names,
                spacing=spacing or "1.5",
                window=window or "soft_tissue",
                on_progress=lambda stage, done, total: update(done, total),
            )
        report["hardware"] = hardware
        if as_json:
            _print_json(report)
        else:
            render_volumes(report, out)
            render_hardware(hardware, out)
            out.print(report["verdict"])
        if not report["ok"]:
            raise typer.Exit(EXIT_NO)
        return
    if cfg.labels is None:  # a segmentation-only site: the SEGs are its labels
        from client.check_view import render_segmentation
        from shared.tasks.segmentation.data import check_segments_only

        names = name_list(segments)
        with progress_bar("Scanning DICOM", enabled=not as_json) as update:
            report = check_segments_only(cfg, names, on_progress=update)
        report["hardware"] = hardware
        if as_json:
            _print_json(report)
        else:
            render_segmentation(report["segmentation"], out)
            render_hardware(hardware, out)
            out.print(report["verdict"])
        if not report["ok"]:
            raise typer.Exit(EXIT_NO)
        return
    if findings:
        cfg.findings = name_list(findings)
    with progress_bar("Scanning DICOM", enabled=not as_json) as update:
        if cfg.findings:  # a multi-label CSV: a column per finding instead of label_column
            from shared.tasks.multilabel.data import check_multilabel_site

            result = check_multilabel_site(cfg, list(cfg.findings), on_progress=update)
        else:
            result = check_site(cfg, on_progress=update)
    report = {**result.to_json(), "hardware": hardware}
    if segments:
        from shared.tasks.segmentation.data import match_site_masks

        names = name_list(segments)
        seg = match_site_masks(cfg, result.scan, names)
        report["segmentation"] = seg.to_json()
    if as_json:
        _print_json(report)
    else:
        render_check(report, out)  # with the hardware line
        if "segmentation" in report:
            from client.check_view import render_segmentation

            render_segmentation(report["segmentation"], out)
    if not report["ok"]:
        raise typer.Exit(EXIT_NO)


def _check_label_free(config: Path, data: Path | None, cache_dir: Path | None, as_json: bool) -> None:
    """``check`` of a site.yaml without ``labels``: what ``fedrad-site start`` checks before joining (CT/MR series
    or images, with their labels), then what the site trains on; exit 1 when it cannot train."""
    from client.check_view import render_hardware
    from client.site_options import site_data_config
    from shared.hardware import site_hardware
    from shared.site_data import check_label_free_site

    cfg = site_data_config(config, data, cache_dir=cache_dir, task="segmentation")
    hardware = site_hardware(cfg, config).to_json()
    ok, verdict = check_label_free_site(cfg)
    report = {"ok": ok, "verdict": verdict, "data": str(cfg.data), "labels_file": None, "hardware": hardware}
    if as_json:
        _print_json(report)
    else:
        render_hardware(hardware, out)
        out.print(verdict, highlight=False)
        out.print(
            "Segment names come with each run: `--segments a,b` matches them to the images (`--volumes --segments "
            "a,b` to CT/MR series) and lists every problem.",
            highlight=False,
        )
    if not ok:
        raise typer.Exit(EXIT_NO)


@app.command("train-local")
@handle_errors
def train_local(
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write the model file (.pt)."),
    config: Path | None = ConfigOpt,
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    classes: str | None = ClassesOpt,
    key: str | None = KeyOpt,
    label_column: str | None = LabelColOpt,
    image_size: int | None = SizeOpt,
    cache_dir: Path | None = CacheOpt,
    model: str | None = typer.Option(
        None,
        "--model",
        help="Architecture: smallcnn (default), densenet121, resnet18, resnet50, efficientnet_b0; unet with --segments.",
    ),
    init_weights: Path | None = typer.Option(
        None,
        "--init-weights",
        help="Start from these weights: a FedRad model file of the task, or a plain PyTorch state dict "
        "(ImageNet, torchxrayvision, a colleague's checkpoint); the import report is printed.",
    ),
    epochs: int = typer.Option(15, "--epochs", min=1, help="Training epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default 32 (8 with --segments)."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="Default 1e-3 (3e-3 with --segments)."),
    augment: float = typer.Option(1.0, "--augment", min=0.0, help="Augmentation strength (0 = off)."),
    scanner_augment: float = typer.Option(
        0.0,
        "--scanner-augment",
        min=0.0,
        help="Scanner-look augmentation strength (exposure field, collimation, blur, contrast curve, noise); 0 = off.",
    ),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.9),
    seed: int = typer.Option(0, "--seed"),
    site_name: str = typer.Option("local-site", "--site-name", help="Recorded in the model's provenance."),
    device: str | None = DeviceOpt,
    threads: int | None = ThreadsOpt,
    segments: str | None = typer.Option(
        None,
        "--segments",
        help="Segment labels, e.g. nodule,lung: train a "
        "segmentation model on the export's DICOM SEGs (no label CSV needed).",
    ),
    findings: str | None = FindingsOpt,
    uncertain: str | None = typer.Option(
        None, "--uncertain", help="Multi-label: an uncertain (-1) label trains as ignore (default), ones or zeros."
    ),
    volumes: bool = typer.Option(
        False, "--volumes", help="CT/MR series: train 3D segmentation (with --segments; --image-size is the patch)."
    ),
    spacing: str | None = typer.Option(
        None, "--spacing", help="With --volumes: voxel size to resample to, mm: 1.5 or 3x1.5x1.5 (S x P x L)."
    ),
    window: str | None = typer.Option(
        None, "--window", help="With --volumes: CT window, soft_tissue (default), lung, bone, brain or level/width."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Train a local baseline on this site's data only; nothing leaves the site."""
    from client.site_options import site_data_config
    from client.train_local import TrainLocalOptions, run_train_local
    from shared.tasks import TaskSpec, get_task

    # --segments names a segmentation task's outputs, --findings (or site.yaml's findings) a multilabel task's
    seg = name_list(segments)
    if (volumes and not seg) or ((spacing or window) and not volumes):
        raise ConfigError("--volumes needs --segments (the label names), and --spacing/--window need --volumes")
    kind = get_task("segmentation3d" if volumes else "segmentation" if seg else "classification")
    cfg = site_data_config(config, data, labels, classes, key, label_column, image_size, cache_dir, task=kind.name)
    found = [] if seg else name_list(findings) or list(cfg.findings or [])
    kind = get_task("multilabel") if found else kind
    flag = "--segments" if seg else "--findings" if found else "--classes"
    try:
        outputs = kind.check_outputs(seg or found or list(cfg.classes))
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    given = {"uncertain": uncertain, "spacing": spacing, "window": window}
    try:
        options = kind.check_options({k: v for k, v in given.items() if v})
    except ValueError as exc:
        raise ConfigError(f"--{str(exc).split()[0].removeprefix('task.')}: {exc}") from None
    cfg.findings = found or None
    task = TaskSpec(kind.name, tuple(outputs), model or kind.default_model, cfg.image_size, options)
    opts = TrainLocalOptions(
        model=task.model,
        epochs=epochs,
        batch_size=batch_size or 0,
        lr=lr or 0.0,
        augment=augment,
        scanner_augment=scanner_augment,
        val_fraction=val_fraction,
        seed=seed,
        site_name=site_name,
        threads=threads,
        device=device,
        init_weights=init_weights,
    )
    summary = run_train_local(cfg, opts, out_path, show_progress=not as_json, console=out, task=task, config=config)
    if as_json:
        _print_json(summary)


@app.command()
@handle_errors
def evaluate(
    model_path: Path = typer.Option(..., "--model", "-m", help="A FedRad model file (local or global)."),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Report folder (stays at the site); default with --config: WORK_DIR/reports/<model>-<UTC time>.",
    ),
    config: Path | None = ConfigOpt,
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    key: str | None = KeyOpt,
    label_column: str | None = LabelColOpt,
    cache_dir: Path | None = CacheOpt,
    n_bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap replicates for the AUC CI."),
    explain: int = typer.Option(
        0, "--explain", min=0, help="Add Grad-CAM overlays for K cases per class to the report."
    ),
    device: str | None = DeviceOpt,
    threads: int | None = ThreadsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a model on this site's labelled images: metrics, plots and an HTML report in OUT."""
    from client.evaluate import run_evaluate

    if out_dir is None:
        if config is None:
            raise ConfigError("--out: name the report folder, or give --config site.yaml (reports go to its work dir)")
        from client.site_config import default_report_dir

        out_dir = default_report_dir(config, model_path)
        err.print(f"report folder: {out_dir}", highlight=False, soft_wrap=True)
    metrics = run_evaluate(
        model_path,
        out_dir,
        config=config,
        data=data,
        labels=labels,
        key=key,
        label_column=label_column,
        cache_dir=cache_dir,
        n_bootstrap=n_bootstrap,
        show_progress=not as_json,
        console=out,
        explain=explain,
        device=device,
        threads=threads,
    )
    if as_json:
        _print_json(metrics)


@app.command()
@handle_errors
def infer(
    model_path: Path = typer.Option(
        ..., "--model", "-m", help="A FedRad model file (classification, multilabel, segmentation)."
    ),
    config: Path = typer.Option(..., "--config", "-c", help="site.yaml: the export ('data'), the PACS ('pacs')."),
    study: list[str] = typer.Option([], "--study", help="StudyInstanceUID of a study in the export (repeatable)."),
    accessions: Path | None = typer.Option(
        None, "--accessions", help="CSV of studies: a column AccessionNumber or StudyInstanceUID."
    ),
    to: str = typer.Option("folder", "--to", help="folder (--out DIR) or pacs (site.yaml's pacs.peer / dicomweb)."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the objects (one file each, a folder per study); with --to pacs a copy."
    ),
    via: str = typer.Option("dimse", "--via", help="--to pacs by dimse (C-STORE to pacs.peer) or dicomweb (STOW-RS)."),
    explain: bool = typer.Option(
        False, "--explain", help="Also a Grad-CAM overlay per image as a Secondary Capture marked NOT FOR DIAGNOSIS."
    ),
    device: str | None = DeviceOpt,
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch CPU threads (default: site.yaml's threads, else 1)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Run a model on studies of the export and write the results as DICOM (SR, SEG, Grad-CAM capture) to a
    folder or PACS; every run is logged in WORK_DIR/infer/. Exit 0: all delivered; 1: some study or object not."""
    from client.infer import InferOptions, run_infer

    opts = InferOptions(
        model=model_path,
        config=config,
        studies=list(study),
        accessions=accessions,
        to=to,
        out=out_dir,
        via=via,
        explain=explain,
        device=device,
        threads=threads,
    )
    summary = run_infer(opts, show_progress=not as_json)
    if as_json:
        _print_json(summary)
    else:
        _render_infer(summary)
    raise typer.Exit(summary["exit_code"])


def _render_infer(summary: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Results to {summary['destination']}", title_justify="left")
    for name in ("study", "object", "SOP instance", "status"):
        table.add_column(name)
    for d in summary["objects"]:
        mark = "[green]ok[/]" if d["ok"] else "[red]failed[/]"
        table.add_row(d["study_uid"], d["kind"], d["sop_instance_uid"], f"{mark} {escape(d['status'])}")
    out.print(table)
    for study in summary["studies"]:
        if study.get("error"):
            err.print(f"[red]study {study['study_uid']}:[/] {escape(study['error'])}", highlight=False)
    for gone in summary["missing"]:
        err.print(f"[yellow]missing:[/] {escape(gone['message'])}", highlight=False, soft_wrap=True)
    out.print(
        f"{summary['delivered']} object(s) delivered, {summary['failed']} failed; log: {summary['log']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@handle_errors
def finetune(
    model_path: Path = typer.Option(..., "--model", "-m", help="The global model file to adapt."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write the fine-tuned model file (.pt)."),
    config: Path | None = ConfigOpt,
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    cache_dir: Path | None = CacheOpt,
    epochs: int = typer.Option(3, "--epochs", min=1),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help="Small: keep what the consortium learned."),
    augment: float = typer.Option(1.0, "--augment", min=0.0),
    scanner_augment: float = typer.Option(
        0.0,
        "--scanner-augment",
        min=0.0,
        help="Scanner-look augmentation strength (exposure field, collimation, blur, contrast curve, noise); 0 = off.",
    ),
    test_fraction: float = typer.Option(
        0.3, "--test-fraction", min=0.05, max=0.9, help="Patients held out to score before/after."
    ),
    seed: int = typer.Option(0, "--seed"),
    site_name: str = typer.Option("local-site", "--site-name", help="Recorded in the model's provenance."),
    n_bootstrap: int = typer.Option(1000, "--bootstrap", min=0),
    device: str | None = DeviceOpt,
    threads: int | None = ThreadsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fine-tune the global model on this site's data and compare it with the global model on held-out patients."""
    from client.finetune import FinetuneOptions, run_finetune

    opts = FinetuneOptions(
        epochs=epochs,
        lr=lr,
        augment=augment,
        scanner_augment=scanner_augment,
        test_fraction=test_fraction,
        seed=seed,
        site_name=site_name,
        n_bootstrap=n_bootstrap,
        device=device,
        threads=threads,
    )
    summary = run_finetune(
        model_path,
        out_path,
        opts,
        config=config,
        data=data,
        labels=labels,
        cache_dir=cache_dir,
        show_progress=not as_json,
        console=out,
    )
    if as_json:
        _print_json(summary)


@app.command()
@handle_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the synthetic sites into."),
    sites: int = typer.Option(3, "--sites", min=1, max=8, help="Number of training sites."),
    unseen: int | None = typer.Option(
        None, "--unseen", min=0, max=4, help="Extra sites with a different scanner (default: 0 radiographs, 1 CT)."
    ),
    seed: int = typer.Option(0, "--seed"),
    scale: float = typer.Option(1.0, "--scale", min=0.01, help="Multiply the default site sizes."),
    shift: float = typer.Option(
        1.0, "--shift", min=0.0, help="Scanner shift between sites (0 none, 1 moderate, 2 strong)."
    ),
    difficulty: float | None = typer.Option(
        None, "--difficulty", help="Higher = fainter nodules (0 obvious, 1 barely visible)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace sites already in OUT_DIR."),
    task: str | None = typer.Option(
        None,
        "--task",
        help="classification (the radiographs' default), segmentation (also a DICOM SEG (nodule, lung) beside every "
        "image), or multilabel (effusion, nodule, cardiomegaly, consolidation; labels.csv has a column per finding: "
        "1, 0, -1, blank). CT is always segmentation.",
    ),
    test_images: int = typer.Option(
        0,
        "--test-images",
        min=0,
        help="Also write site-<k>/test/: this many images of "
        "other patients per training site, the benchmark's test set there (0: none).",
    ),
    modality: str = typer.Option(
        "xr",
        "--modality",
        help="xr: chest radiographs (default). ct: CT volumes (classic, compressed and enhanced multi-frame DICOM "
        "series, four patient positions, junk series to reject), labelled by DICOM SEG or RTSTRUCT, "
        "with manifest.json; --scale multiplies its 6 patients a site.",
    ),
    size: int | None = typer.Option(
        None, "--size", min=16, max=128, help="CT only: image columns, volumes about size^3 (default 48)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Write synthetic sites as real DICOM for dry runs and demos: chest radiographs plus labels.csv, or CT series."""
    from client.synth_command import CT_DEFAULT_SIZE, check_modality_options, run_ct_synth, run_synth

    modality, task = check_modality_options(modality, task, test_images, difficulty, shift, size)
    if modality == "ct":
        summary = run_ct_synth(
            out_dir, sites, 1 if unseen is None else unseen, seed, scale, size or CT_DEFAULT_SIZE, overwrite
        )
        if as_json:
            _print_json(summary)
            return
        from rich.table import Table

        table = Table(title=f"Synthetic CT cohort in {out_dir}", title_justify="left")
        for col in ("site", "patients", "series", "junk", "encoding", "labels"):
            table.add_column(col)
        for s in summary["sites"]:
            table.add_row(
                s["name"], str(s["patients"]), str(s["series"]), str(s["junk_series"]), s["encoding"], s["labels"]
            )
        out.print(table)
        out.print(f"manifest: {summary['manifest']}")
        return
    summary = run_synth(out_dir, sites, unseen or 0, seed, scale, shift, difficulty, overwrite, task, test_images)
    if as_json:
        _print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=f"Synthetic cohort in {out_dir}", title_justify="left")
        for col in ("site", "images", "classes", "transfer syntax"):
            table.add_column(col)
        for s in summary["sites"]:
            table.add_row(s["name"], str(s["n_images"]), json.dumps(s["classes"]), s["transfer_syntax"])
        out.print(table)


@app.command()
@handle_errors
def keygen(
    directory: Path = typer.Argument(
        ..., help="Folder for site.key (private, stays here) and site.pub (send to the coordinator)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing key (key rotation: re-enroll the new site.pub)."
    ),
) -> None:
    """Make this site's identity key pair; print the fingerprint to confirm with the coordinator."""
    from shared.config import ConfigError
    from shared.keys import SiteKeyError, fingerprint, generate_site_keys

    try:
        priv, pub = generate_site_keys(directory, overwrite=overwrite)
    except SiteKeyError as exc:
        raise ConfigError(str(exc)) from None
    out.print(f"private key: {priv} (mode 0600; never send it anywhere, back it up like a password)")
    out.print(f"public key:  {pub} (send this file to the coordinator)")
    out.print(f"fingerprint: [bold]{fingerprint(pub)}[/] (read it to the coordinator by phone)")


@app.command()
@handle_errors
def start(
    config: Path = typer.Option(..., "--config", "-c", help="site.yaml: data settings plus the bundle's credentials."),
    skip_check: bool = typer.Option(False, "--skip-check", help="Do not re-check the data before joining."),
) -> None:
    """Check the data, then join the consortium and train when the server asks (runs until stopped)."""
    from client.site_start import SiteStartError, run_site

    try:
        run_site(config, console=out, skip_check=skip_check)
    except SiteStartError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_NO) from None


SiteConfigOpt = typer.Option(..., "--config", "-c", help="site.yaml of this site (its work_dir holds the files).")


@app.command()
@handle_errors
def fetch(
    config: Path = typer.Option(..., "--config", "-c", help="site.yaml with a pacs section (docs/pacs.md)."),
    accessions: Path | None = typer.Option(
        None, "--accessions", help="CSV with an AccessionNumber (or StudyInstanceUID) column; a label CSV will do."
    ),
    since: str | None = typer.Option(None, "--since", help="Instead of a list: studies from this date (YYYY-MM-DD)."),
    until: str | None = typer.Option(None, "--until", help="… up to this date (default today)."),
    modality: str | None = typer.Option(None, "--modality", help="With --since: only these modalities, e.g. CR,DX."),
    via: str = typer.Option("dimse", "--via", help="dimse (C-FIND + C-GET/C-MOVE: pacs.peer) or dicomweb."),
    as_json: bool = JsonOpt,
) -> None:
    """Query PACS and retrieve studies (by accession list, or by date range and modality) into the site's data.

    Studies land in pacs.node.receive_dir (default DATA/received) as STUDY/SERIES/SOP.dcm; exit 0 when every study
    asked for is here, 1 when some are missing or refused, 2 on a configuration or input problem."""
    from client.fetch_request import date_request, load_fetch_site, read_accession_csv
    from client.fetch_view import render_fetch
    from client.pacs_fetch import fetch as run_fetch

    if (accessions is None) == (since is None):
        raise ConfigError("give --accessions CSV, or --since DATE (with --until and --modality if wanted)")
    if accessions is not None and (until or modality):
        raise ConfigError("--until and --modality go with --since, not with --accessions")
    site = load_fetch_site(config)
    request = (
        read_accession_csv(accessions) if accessions is not None else date_request(since, until, name_list(modality))
    )
    with progress_bar("Querying and retrieving", enabled=not as_json) as update:
        summary = run_fetch(site, request, via, on_progress=lambda stage, done, total: update(done, total))
    report = summary.to_json()
    if as_json:
        _print_json(report)
    else:
        render_fetch(report, out)
    if not report["ok"]:
        raise typer.Exit(EXIT_NO)


@app.command()
@handle_errors
def approve(
    config: Path = SiteConfigOpt,
    code_hash: str | None = typer.Option(
        None, "--code-hash", help="sha256 of reviewed code (default: this installation's)."
    ),
    note: str = typer.Option("", "--note", help="Why it was approved (who reviewed it), kept with the approval."),
    list_only: bool = typer.Option(False, "--list", help="Only list the approved code fingerprints."),
    as_json: bool = JsonOpt,
) -> None:
    """Approve FedRad code for consortium runs at this site; runs shipping any other code are refused."""
    from client.approval import ApprovalError, approvals_path, load_approvals
    from client.approval import approve as add_approval
    from client.site_config import load_site_file
    from shared.code_identity import code_sha256, installed_root
    from shared.config import ConfigError

    path = approvals_path(load_site_file(config).work_dir)
    installed = code_sha256(installed_root())
    try:
        added = None
        if not list_only:
            added = add_approval(path, code_hash or installed, note or ("installed FedRad" if not code_hash else ""))
        entries = load_approvals(path)
    except ApprovalError as exc:
        raise ConfigError(str(exc)) from None
    if as_json:
        _print_json({"approvals": str(path), "installed_code_sha256": installed, "added": added, "approved": entries})
        return
    if added is not None:
        out.print(f"{'approved' if added else 'already approved'}: {code_hash or installed}")
    out.print(f"installed FedRad code: {installed}")
    for e in entries:
        out.print(f"  {e['sha256']}  {e.get('approved_at', '')}  {e.get('note', '')}", highlight=False)


@app.command()
@handle_errors
def receive(
    config: Path = SiteConfigOpt,
    json_log: bool = typer.Option(
        False, "--json-log", help="Print each log entry as one JSON line on stdout (for journald) instead of text."
    ),
) -> None:
    """Run this site's DICOM storage node (site.yaml pacs.node): PACS sends studies here, they land in the data
    folder, one folder per study; refused callers and unusable objects are logged in WORK_DIR/receive. Runs until
    Ctrl-C or SIGTERM (docs/pacs.md)."""
    from client.receive_run import run_receive

    run_receive(config, out, json_log=json_log)


@app.command()
@handle_errors
def dashboard(
    config: Path = SiteConfigOpt,
    host: str = HostOpt,
    port: int = typer.Option(8351, "--port", min=1, max=65535, help="Port to serve on."),
    tls_cert: Path | None = TlsCertOpt,
    tls_key: Path | None = TlsKeyOpt,
    token_file: Path | None = TokenFileOpt,
    reports: list[Path] = typer.Option(
        [], "--reports", help="Also list the evaluation reports under this folder (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the page model once (after the data check) and exit."),
) -> None:
    """A read-only web page of this site: what it sent (the verified audit log), its data check, approved code,
    privacy settings and evaluation reports. Serves on 127.0.0.1 until Ctrl-C."""
    from client.dashboard import SitePage
    from shared.dashboard.cli_options import serve_from_cli

    if as_json:
        source = SitePage(config, reports=reports)
        source.wait_for_check()
        _print_json(source.page())
        return
    serve_from_cli(lambda: SitePage(config, reports=reports), host, port, tls_cert, tls_key, token_file)


audit_app = typer.Typer(help="What this site sent: verify and show the outbound audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _audit_log(config: Path) -> Path:
    """The site's audit log; a missing one is a usage error (exit 2), not a failed verification."""
    from client.site_config import load_site_file, site_node_config
    from shared.config import ConfigError

    log = Path(site_node_config(config, load_site_file(config))["audit-log"])
    if not log.is_file():
        raise ConfigError(f"{log}: no audit log yet (this site has sent nothing), or work_dir in {config} is wrong")
    return log


@audit_app.command("verify")
@handle_errors
def audit_verify(
    config: Path = SiteConfigOpt,
    as_json: bool = JsonOpt,
    pinned: Path | None = typer.Option(
        None, "--pinned", help="A pin file (site.yaml audit.pin_file): the log must still hold every head pinned there."
    ),
    public_key: Path | None = typer.Option(
        None,
        "--public-key",
        help="Check the head's signature with this site.pub (default: the one beside private_key).",
    ),
) -> None:
    """Check the hash chain and the signed head; exit 1 if any line was edited, removed or reordered."""
    from client.audit import AuditError, verify
    from client.audit_site import verify_key
    from client.audit_view import render_summary
    from client.site_config import load_site_file

    log = _audit_log(config)
    key = verify_key(load_site_file(config), public_key)
    try:
        summary = verify(log, key, pinned)
    except AuditError as exc:
        if as_json:
            _print_json({"ok": False, "error": str(exc)})
        else:
            err.print(f"[bold red]audit log does not verify:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_NO) from None
    if as_json:
        _print_json({"ok": True, **summary.to_json()})
    else:
        render_summary(summary, out)


@audit_app.command("show")
@handle_errors
def audit_show(
    config: Path = SiteConfigOpt,
    last: int = typer.Option(50, "--last", help="Show the last N entries (0 = all)."),
    as_json: bool = JsonOpt,
) -> None:
    """Every message this site sent: run, round, type, bytes, metrics and the guard's decisions."""
    from client.audit_view import load_entries, render_entries

    entries = load_entries(_audit_log(config), last)
    if as_json:
        _print_json({"entries": entries})
    else:
        render_entries(entries, out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
