"""``fedrad-site synth``: a synthetic cohort for dry runs, the demo and tests (radiographs, or CT with ``--modality ct``)."""

from __future__ import annotations

from pathlib import Path

from shared.config import ConfigError
from shared.synth import DEFAULT_DIFFICULTY, write_cohort


def run_synth(
    out_dir: Path,
    sites: int,
    unseen: int,
    seed: int,
    scale: float,
    shift: float,
    difficulty: float | None,
    overwrite: bool = False,
    task: str = "classification",
    test_images: int = 0,
) -> dict:
    try:
        summaries = write_cohort(
            Path(out_dir),
            n_sites=sites,
            seed=seed,
            unseen=unseen,
            scale=scale,
            shift=shift,
            difficulty=DEFAULT_DIFFICULTY if difficulty is None else difficulty,
            overwrite=overwrite,
            task=task,
            test_images=test_images,
        )
    except FileExistsError as exc:
        raise ConfigError(f"{exc} (or run 'fedrad-site synth --overwrite')") from None
    except ValueError as exc:  # a dial out of range
        raise ConfigError(f"{out_dir}: {exc}") from None
    return {
        "out": str(out_dir),
        "task": task,
        "sites": [
            {
                "name": s.name,
                "path": str(s.path),
                "n_images": s.n_images,
                "patients": s.n_patients,
                "classes": s.class_counts,
                "profile": s.profile,
                "transfer_syntax": s.transfer_syntax,
            }
            for s in summaries
        ],
    }


MODALITIES = ("xr", "ct")
CT_TASKS = ("segmentation",)
CT_DEFAULT_PATIENTS = 6
CT_DEFAULT_SIZE = 48  # shared.synth.ct_cohort.DEFAULT_SIZE, without importing scipy for a radiograph run


def check_modality_options(
    modality: str,
    task: str | None,
    test_images: int,
    difficulty: float | None,
    shift: float,
    size: int | None = None,
) -> tuple[str, str]:
    """(modality, task) after the command line's defaults; a clear error for options the modality lacks."""
    modality = modality.lower()
    if modality not in MODALITIES:
        raise ConfigError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if modality == "xr":
        if size is not None:
            raise ConfigError("--size: a CT option (radiographs keep each site's own matrix); add --modality ct")
        return modality, task or "classification"
    if task is not None and task not in CT_TASKS:
        raise ConfigError(
            f"--modality ct writes volumes labelled for segmentation (SEG or RTSTRUCT per site); "
            f"--task {task} is for radiographs: drop --task or use --task segmentation"
        )
    unused = [
        flag
        for flag, given in (
            ("--test-images", test_images),
            ("--difficulty", difficulty is not None),
            ("--shift", shift != 1.0),
        )
        if given
    ]
    if unused:
        raise ConfigError(f"{', '.join(unused)}: radiograph options, not available with --modality ct")
    return modality, "segmentation"


def run_ct_synth(
    out_dir: Path, sites: int, unseen: int, seed: int, scale: float, size: int, overwrite: bool = False
) -> dict:
    """Write a synthetic CT cohort (:func:`shared.synth.ct_cohort.write_ct_cohort`); its summary for the CLI."""
    from shared.synth.ct_cohort import MANIFEST, write_ct_cohort

    patients = max(2, int(round(CT_DEFAULT_PATIENTS * scale)))
    try:
        summaries = write_ct_cohort(
            Path(out_dir),
            n_sites=sites,
            seed=seed,
            unseen=unseen,
            patients_per_site=patients,
            size=size,
            overwrite=overwrite,
        )
    except FileExistsError as exc:
        raise ConfigError(f"{exc} (or run 'fedrad-site synth --overwrite')") from None
    except ValueError as exc:
        raise ConfigError(f"{out_dir}: {exc}") from None
    return {
        "out": str(out_dir),
        "modality": "ct",
        "task": "segmentation",
        "manifest": str(Path(out_dir) / MANIFEST),
        "sites": [
            {
                "name": s.name,
                "path": str(s.path),
                "unseen": s.unseen,
                "patients": s.n_patients,
                "series": s.n_series,
                "junk_series": s.n_junk,
                "encoding": s.encoding,
                "labels": s.label_format,
                "profile": s.profile,
            }
            for s in summaries
        ],
    }
