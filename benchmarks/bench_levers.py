"""What the preprocessing and augmentation levers add, at the training sites and at the unseen site.

Trains the pooled model (all training sites' training patients in one place, the same ``train_model``
the sites use) once per lever setting and seed, and scores it on each training site's held-out
patients (30 %, patient-grouped, split by the seed) and on every image of the unseen site. Pooled
is the cleanest place to read a preprocessing or augmentation lever: no federated noise on top;
``fedrad-bench generalization`` measures the shipped levers federated. Settings:

* ``default``: FedRad's default (per-image percentile window, ``augment: 1.0``); the baseline of
  every difference;
* ``augment 0`` / ``0.5`` / ``2.0``: ``augment:`` in ``consortium.yaml``;
* ``scanner augment 0.5`` / ``1.0`` / ``2.0``: ``scanner_augment:`` (:mod:`shared.scanner_augment`);
* ``equalize``: the ``smallcnn-eq`` model (its histogram-equalisation input layer, :mod:`shared.intensity`);
* ``equalize + scanner augment 1.0``: both;
* ``zscore``: per-image mean/sd standardisation of the cached tensors instead of the window (not shipped).

Differences are paired per seed (every setting of a seed shares its split, initial weights and
shuffling) with a 95 % interval (:func:`benchmarks.paired_comparison.paired_difference`).

    .venv/bin/python -m benchmarks.bench_levers [--cohort DIR] [--cache DIR] [--seeds 3] [--epochs 15]
        [--shift 1] [--only "default;equalize + scanner augment 1.0"] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.paired_comparison import paired_difference  # noqa: E402
from shared.config import SiteDataConfig  # noqa: E402
from shared.models import build_model  # noqa: E402
from shared.packed import to_tensor  # noqa: E402
from shared.site_data import load_site_dataset  # noqa: E402
from shared.splits import stratified_group_split  # noqa: E402
from shared.synth import write_cohort  # noqa: E402
from shared.tasks.classification.dataset import SiteDataset, concat_datasets  # noqa: E402
from shared.tasks.classification.evaluation import auc_score  # noqa: E402
from shared.training import TrainConfig, train_model  # noqa: E402

TRAINING_SITES = ("site-1", "site-2", "site-3")
UNSEEN = "unseen-1"
TEST_FRACTION = 0.3


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).reshape(x.shape)


@dataclass(frozen=True)
class Setting:
    """One lever setting: the model, a transform of the cached tensors, and the two augmentation strengths."""

    model: str = "smallcnn"
    augment: float = 1.0
    scanner_augment: float = 0.0
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


SETTINGS: dict[str, Setting] = {
    "default": Setting(),
    "augment 0": Setting(augment=0.0),
    "augment 0.5": Setting(augment=0.5),
    "augment 2.0": Setting(augment=2.0),
    "scanner augment 0.5": Setting(scanner_augment=0.5),
    "scanner augment 1.0": Setting(scanner_augment=1.0),
    "scanner augment 2.0": Setting(scanner_augment=2.0),
    "equalize": Setting(model="smallcnn-eq"),
    "equalize + scanner augment 1.0": Setting(model="smallcnn-eq", scanner_augment=1.0),
    "zscore": Setting(transform=zscore),
}


def load(cohort: Path, name: str, cache: Path) -> SiteDataset:
    site = cohort / name
    data, _ = load_site_dataset(SiteDataConfig(data=site / "dicom", labels=site / "labels.csv", cache_dir=cache / name))
    return data


def run_setting(setting: Setting, sites: dict[str, SiteDataset], seed: int, epochs: int) -> dict[str, float]:
    """Train the pooled model of one seed; its AUC per training site's held-out patients, their mean, and unseen."""
    data = {
        n: replace(d, images=setting.transform(to_tensor(d.images))) if setting.transform else d
        for n, d in sites.items()
    }
    train, test = [], {}
    for name in TRAINING_SITES:
        d = data[name]
        tr, te = stratified_group_split(d.labels.tolist(), d.groups, TEST_FRACTION, seed)
        train.append(d.subset(tr))
        test[name] = d.subset(te)
    torch.manual_seed(seed)
    model = build_model(setting.model, 2, int(sites[UNSEEN].images.shape[-1]))
    cfg = TrainConfig(epochs=epochs, augment=setting.augment, scanner_augment=setting.scanner_augment, seed=seed)
    train_model(model, concat_datasets(train), cfg)
    model.eval()
    scores = {name: auc_score(model, d) for name, d in test.items()}
    return {**scores, "site mean": statistics.fmean(scores.values()), UNSEEN: auc_score(model, data[UNSEEN])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, help="A synth cohort with site-1..3 and unseen-1 (default: write one)")
    ap.add_argument("--cache", type=Path, help="Tensor cache folder to reuse between runs (default: a temporary one)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--shift", type=float, default=1.0)
    ap.add_argument("--only", help="Settings to run, separated by ';' (default: all); 'default' always runs first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    chosen = ["default"] + [
        k.strip() for k in (args.only or ";".join(SETTINGS)).split(";") if k.strip() not in ("", "default")
    ]
    unknown = [k for k in chosen if k not in SETTINGS]
    if unknown:
        sys.exit(f"--only: unknown setting(s) {unknown}; choose from {'; '.join(SETTINGS)}")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="fedrad-levers-") as tmp:
        cohort = args.cohort
        if cohort is None:
            cohort = Path(tmp) / "cohort"
            write_cohort(cohort, n_sites=3, unseen=1, scale=args.scale, shift=args.shift)
        sites = {n: load(cohort, n, args.cache or Path(tmp) / "cache") for n in [*TRAINING_SITES, UNSEEN]}
        runs: dict[str, list[dict[str, float]]] = {}
        for label in chosen:
            for seed in range(args.seeds):
                t0 = time.monotonic()
                runs.setdefault(label, []).append(run_setting(SETTINGS[label], sites, seed, args.epochs))
                r = runs[label][-1]
                print(
                    f"{label:32s} seed {seed}: site mean {r['site mean']:.4f}, {UNSEEN} {r[UNSEEN]:.4f} "
                    f"({time.monotonic() - t0:.0f} s)",
                    file=sys.stderr,
                )

    def column(label: str, col: str) -> list[float]:
        return [r[col] for r in runs[label]]

    rows = {}
    for label in chosen:
        row: dict = {"model": SETTINGS[label].model}
        for col in ("site mean", UNSEEN):
            vals = column(label, col)
            row[col] = {
                "mean": round(statistics.fmean(vals), 4),
                "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                "vs_default": paired_difference(vals, column("default", col)) if label != "default" else None,
            }
        rows[label] = row
    result = {
        "config": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "scale": args.scale,
            "shift": args.shift,
            "cohort": str(args.cohort or "generated"),
            "test_fraction": TEST_FRACTION,
            "train_images": sum(len(sites[n]) for n in TRAINING_SITES),
            "unseen_images": len(sites[UNSEEN]),
        },
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"pooled model, AUC over {args.seeds} seeds ({args.epochs} epochs): mean ± sd; paired difference to "
        "'default' [95 % CI]"
    )
    print(f"{'setting':32s} {'site mean':>16s} {'Δ [95 % CI]':>26s} {UNSEEN:>16s} {'Δ [95 % CI]':>26s}")
    for label, row in rows.items():
        cells = []
        for col in ("site mean", UNSEEN):
            c, d = row[col], row[col]["vs_default"]
            ci = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d and d["ci95"] else "-"
            cells += [f"{c['mean']:.3f} ± {c['sd']:.3f}", ci]
        print(f"{label:32s} {cells[0]:>16s} {cells[1]:>26s} {cells[2]:>16s} {cells[3]:>26s}")


if __name__ == "__main__":
    main()
