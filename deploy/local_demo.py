"""``make demo``: a whole consortium's data story on this machine, on the bundled synthetic cohort.

Writes three synthetic hospital sites plus an unseen fourth, checks each one as
hospital IT would, trains each site's local-only model and a pooled reference
model (all training sites' data in one place: the upper bound federation aims
for), then evaluates every model on every site's held-out test split and on the
unseen site and prints the AUC table. Each site's test split is held out by
patient before any training.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shared.config import SiteDataConfig
from shared.models import build_model
from shared.site_data import load_site_dataset
from shared.splits import stratified_group_split
from shared.synth import write_cohort
from shared.tasks.classification.dataset import SiteDataset, concat_datasets
from shared.tasks.classification.evaluation import auc_score
from shared.training import TrainConfig, train_model

console = Console()


def split_test(data: SiteDataset, fraction: float, seed: int) -> tuple[SiteDataset, SiteDataset]:
    train_idx, test_idx = stratified_group_split(data.labels.tolist(), data.groups, fraction, seed)
    return data.subset(train_idx), data.subset(test_idx)


def run(out: Path, scale: float, epochs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    console.rule("[bold]FedRad demo: synthetic cohort")
    summaries = write_cohort(out / "cohort", n_sites=3, seed=seed, unseen=1, scale=scale)
    sites = {Path(s.path).name: Path(s.path) for s in summaries}

    console.rule("[bold]Site checks (what hospital IT sees)")
    train_parts, tests, unseen = {}, {}, {}
    for name, path in sites.items():
        cfg = SiteDataConfig(data=path / "dicom", labels=path / "labels.csv")
        data, check = load_site_dataset(cfg)
        report = check.to_json()
        console.print(
            f"{name}: {report['images']['usable']} usable, {report['images']['rejected']} rejected, "
            f"classes {report['classes']}, {report['manufacturers']}, {report['photometric']}"
        )
        if name.startswith("unseen"):
            unseen[name] = data
        else:
            train_parts[name], tests[name] = split_test(data, 0.3, seed)
    eval_sets = {**{f"{n} test": d for n, d in tests.items()}, **unseen}

    console.rule("[bold]Training: each site alone, and pooled (reference)")
    models: dict[str, torch.nn.Module] = {}
    plans = {f"local {n}": d for n, d in train_parts.items()}
    plans["pooled (all sites)"] = concat_datasets(list(train_parts.values()))
    pooled_n = len(plans["pooled (all sites)"])
    for label, data in plans.items():
        model = build_model("smallcnn", len(data.classes), data.images.shape[-1])
        # Matched compute: every model sees about as many gradient steps as the pooled one.
        ep = max(epochs, int(round(epochs * pooled_n / max(len(data), 1)))) if label.startswith("local") else epochs
        ep = min(ep, epochs * 4)
        start = time.perf_counter()
        train_model(model, data, TrainConfig(epochs=ep, seed=seed))
        models[label] = model
        console.print(f"{label}: {len(data)} images, {ep} epochs, {time.perf_counter() - start:.1f} s")

    table = Table(title="AUC of each model (rows) on each site's held-out test split and the unseen site (columns)")
    table.add_column("model")
    for col in eval_sets:
        table.add_column(col, justify="right")
    results: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        results[label] = {col: auc_score(model, d) for col, d in eval_sets.items()}
        table.add_row(label, *[f"{v:.3f}" for v in results[label].values()])
    console.print(table)
    wall = time.perf_counter() - t0
    console.print(f"demo wall time {wall:.0f} s; outputs in {out}")
    summary = {"results": results, "wall_s": wall, "sites": {n: len(d) for n, d in {**train_parts, **unseen}.items()}}
    (out / "demo-results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-run"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.out, args.scale, args.epochs, args.seed)


if __name__ == "__main__":
    main()
