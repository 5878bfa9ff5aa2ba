"""What the preprocessing and augmentation levers add at the unseen site.

Trains the pooled model (all training sites' images in one place, the same
``train_model`` the sites use) once per lever setting and seed, and scores it
on every image of the unseen site. Pooled is the cleanest place to read a
preprocessing or augmentation lever: no federated noise on top. Settings:

* ``window`` + augmentation 1.0: FedRad's default (per-image percentile window,
  ``consortium.yaml`` ``augment: 1.0``); the baseline of every ratio;
* augmentation 0, 0.5, 2.0 (``augment:`` in ``consortium.yaml``);
* ``equalize``: per-image histogram equalisation after the window, a
  standardisation that removes any monotone vendor LUT (gamma, sigmoid);
* ``zscore``: per-image mean/sd standardisation instead of the window.

The two intensity variants are applied to the cached, windowed tensors here.
``equalize`` is what the ``smallcnn-eq`` architecture does as its first layer
(``shared.intensity``; ``task.model: smallcnn-eq``); ``zscore`` is not shipped.

    .venv/bin/python -m benchmarks.bench_levers [--cohort DIR] [--seeds 3] [--epochs 15] [--shift 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.config import SiteDataConfig  # noqa: E402
from shared.dataset import SiteDataset, concat_datasets  # noqa: E402
from shared.intensity import HistogramEqualize  # noqa: E402
from shared.models import build_model  # noqa: E402
from shared.site_data import load_site_dataset  # noqa: E402
from shared.synth import write_cohort  # noqa: E402
from shared.training import TrainConfig, auc_score, train_model  # noqa: E402


equalize = HistogramEqualize()  # per-image histogram equalisation, the smallcnn-eq input layer


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).reshape(x.shape)


#: name → (intensity transform, augmentation strength, scanner-appearance augmentation strength)
SETTINGS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float, float]] = {
    "default (window + augment 1.0)": (lambda x: x, 1.0, 0.0),
    "augment 0": (lambda x: x, 0.0, 0.0),
    "augment 0.5": (lambda x: x, 0.5, 0.0),
    "augment 2.0": (lambda x: x, 2.0, 0.0),
    "scanner augment 0.5": (lambda x: x, 1.0, 0.5),
    "scanner augment 1.0": (lambda x: x, 1.0, 1.0),
    "scanner augment 2.0": (lambda x: x, 1.0, 2.0),
    "equalize": (equalize, 1.0, 0.0),
    "zscore": (zscore, 1.0, 0.0),
}


def load(cohort: Path, name: str, cache: Path) -> SiteDataset:
    site = cohort / name
    data, _ = load_site_dataset(SiteDataConfig(data=site / "dicom", labels=site / "labels.csv", cache_dir=cache / name))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, help="A synth cohort with site-1..3 and unseen-1 (default: write one)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--shift", type=float, default=1.0)
    ap.add_argument("--cache", type=Path, help="Tensor cache folder to reuse between runs (default: a temporary one)")
    ap.add_argument("--only", help="Comma-separated setting names to run (default: all); the first is the baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="fedrad-levers-") as tmp:
        cohort = args.cohort
        if cohort is None:
            cohort = Path(tmp) / "cohort"
            write_cohort(cohort, n_sites=3, unseen=1, scale=args.scale, shift=args.shift)
        names = ["site-1", "site-2", "site-3"]
        sites = {n: load(cohort, n, args.cache or Path(tmp) / "cache") for n in [*names, "unseen-1"]}
        rows: dict[str, list[float]] = {}
        chosen = [k.strip() for k in args.only.split(",")] if args.only else list(SETTINGS)
        unknown = [k for k in chosen if k not in SETTINGS]
        if unknown:
            sys.exit(f"--only: unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
        for label in chosen:
            transform, strength, scanner = SETTINGS[label]
            ds = {n: replace(d, images=transform(d.images)) for n, d in sites.items()}
            pooled = concat_datasets([ds[n] for n in names])
            for seed in range(args.seeds):
                t0 = time.monotonic()
                torch.manual_seed(seed)
                model = build_model("smallcnn", 2, 64)
                train_model(model, pooled, TrainConfig(epochs=args.epochs, augment=strength, scanner_augment=scanner, seed=seed))
                auc = auc_score(model.eval(), ds["unseen-1"])
                rows.setdefault(label, []).append(auc)
                print(f"{label:32s} seed {seed}: unseen AUC {auc:.4f} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    base = statistics.fmean(next(iter(rows.values())))
    result = {
        "config": {"seeds": args.seeds, "epochs": args.epochs, "scale": args.scale, "shift": args.shift,
                   "train_images": sum(len(sites[n]) for n in names), "unseen_images": len(sites["unseen-1"])},
        "rows": {k: {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
                     "delta_vs_default": round(statistics.fmean(v) - base, 4)} for k, v in rows.items()},
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"pooled model, unseen-1 AUC over {args.seeds} seeds ({args.epochs} epochs, shift {args.shift}):")
    print(f"{'setting':32s} {'mean':>7s} {'sd':>7s} {'Δ default':>10s}")
    for k, r in result["rows"].items():
        print(f"{k:32s} {r['mean']:7.4f} {r['sd']:7.4f} {r['delta_vs_default']:+10.4f}")


if __name__ == "__main__":
    main()
