"""``fedrad-site synth``: a synthetic cohort for dry runs, the demo and tests."""

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
