"""AUC cost of differential privacy, against the same federation without it, in one run.

    .venv/bin/python -m benchmarks.bench_privacy [--level site|image] [--rounds 5] [--sites 3] [--scale 0.3] [--json]

``--level image`` (per-image DP-SGD at each site, shared/private_training.py)
first trains a "public" smallcnn on a separate synthetic cohort (seed 99).
Then, from that model (``init-weights``): FedAvg without DP (all layers),
and FedAvg with per-image DP on the classifier only (``dp-layers head``) at
target ε 8 and 3 (each site calibrates its own noise; per-image gradients
clipped to ``--clip``). The cost is read against the run without DP.
``--with-gn`` adds smallcnn-gn trained from scratch with and without DP on
all layers. The rest of this docstring is ``--level site``.

One loopback consortium (deploy/loopback.py: TLS, site keys, warm workers)
trains FedAvg for ``--rounds`` rounds three ways on the same synthetic sites
and seed: without DP, then with central DP (sites clip, the server adds
noise; server/strategies/dp.py) at noise multipliers chosen for ε ≈ 8 and
ε ≈ 30 at δ = 1e-5 over those rounds (Flower's RDP accountant). The clipping
norm is the median per-round change of the global model in the run without
DP (so clipping itself barely bites). Each final model is scored on the
sites' held-out patients (federated evaluation, the last round) and on an
unseen synthetic site (80+ images, in this process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from rich.table import Table

from benchmarks.bench_round_overhead import FEDRAD_CONFIG, wait_online
from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.strategies.dp import DpSettings, new_accountant, release_event
from server.superlink import stage_app, submit_run
from shared.cli_support import report_console
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth import write_cohort

IMAGE_SIZE, EPOCHS = 64, 4
PUBLIC_EPOCHS = 15  # the demo's setting: at 32×32 and 2 epochs FedAvg itself stays near chance in 5 rounds


def noise_for_epsilon(target: float, rounds: int, delta: float = 1e-5) -> float:
    """The smallest noise multiplier (0.05 steps) whose ε after ``rounds`` rounds is at most ``target``."""
    for z in np.arange(0.3, 20.0, 0.05):
        acc = new_accountant(DpSettings(float(z), 1.0, delta))
        acc.compose(release_event(DpSettings(float(z), 1.0, delta), 3), rounds)
        if acc.get_epsilon(delta) <= target:
            return round(float(z), 2)
    raise ValueError(f"no noise multiplier reaches ε {target} in {rounds} rounds")


def run(lc, root: Path, label: str, rounds: int, sites: int, dp: dict) -> Path:  # noqa: ANN001
    run_dir = root / "runs" / label
    config = {
        **FEDRAD_CONFIG,
        "local-epochs": EPOCHS,
        "image-size": IMAGE_SIZE,
        "run-dir": str(run_dir),
        "num-server-rounds": rounds,
        "evaluate-every": rounds,
        "min-sites": sites,
        **dp,
    }
    run_id = submit_run(lc.link, stage_app(root / f"app-{label}", REPO, config))
    with lc.link.control() as control:
        info = control.wait_for_run(run_id, timeout=rounds * 240 + 120, poll=1.0)
    if info["status"] != "finished:completed":
        raise SystemExit(f"run {label} ended {info['status']}: {info.get('details')}")
    return run_dir


def global_update_norms(run_dir: Path, rounds: int) -> list[float]:
    """L2 norm of the global model's change per round (learned parameters only)."""
    from shared.dp_rules import dp_covered

    states = [load_model_file(run_dir / f"round-{r:04d}.pt").model.state_dict() for r in range(1, rounds + 1)]
    keys = dp_covered(states[0])
    return [
        float(np.sqrt(sum(float(((b[k] - a[k]).double() ** 2).sum()) for k in keys)))
        for a, b in zip(states, states[1:])
    ]


def unseen_auc(run_dir: Path, unseen) -> float:  # noqa: ANN001 - SiteSummary
    """AUC on the unseen site of a run's last model (or of a model file)."""
    from shared.config import SiteDataConfig
    from shared.site_data import load_site_dataset
    from shared.tasks.classification.evaluation import evaluate

    model = load_model_file(run_dir if run_dir.is_file() else run_dir / "latest.pt")
    data, _ = load_site_dataset(
        SiteDataConfig(
            data=unseen.dicom_dir,
            labels=unseen.labels_csv,
            classes=model.classes,
            image_size=model.preprocess.image_size,
        )
    )
    return float(evaluate(model.model, data)["val_auc"])


def pretrain_public_model(root: Path, scale: float, console) -> Path:  # noqa: ANN001
    """A smallcnn trained on a separate synthetic cohort (other patients, seed 99): the "public" model DP fine-tunes."""
    from shared.config import SiteDataConfig
    from shared.modelfile import save_model_file
    from shared.models import build_model
    from shared.site_data import load_site_dataset
    from shared.tasks.classification.dataset import concat_datasets
    from shared.training import TrainConfig, seed_everything, train_model

    public = write_cohort(root / "public", n_sites=3, unseen=0, scale=scale, seed=99)
    configs = [
        SiteDataConfig(data=s.dicom_dir, labels=s.labels_csv, classes=["normal", "nodule"], image_size=IMAGE_SIZE)
        for s in public
    ]
    data = concat_datasets([load_site_dataset(c)[0] for c in configs])
    console.print(f"pretraining the public model on {len(data)} images of another synthetic cohort …")
    seed_everything(0)
    model = build_model("smallcnn", 2, IMAGE_SIZE)
    train_model(model, data, TrainConfig(epochs=PUBLIC_EPOCHS, batch_size=16, augment=0.5))
    path = root / "public-model.pt"
    save_model_file(
        path,
        model,
        architecture="smallcnn",
        arch_kwargs={},
        classes=["normal", "nodule"],
        preprocess=configs[0].preprocess(),
        threshold=None,
        provenance={
            "trained_by": "public synthetic cohort",
            "kind": "local",
            "epochs": PUBLIC_EPOCHS,
            "extra": {"train_images": len(data)},
        },
    )
    return path


def image_level_runs(lc, root: Path, a, console) -> tuple[dict[str, tuple[Path, float]], str]:  # noqa: ANN001
    """Per-image DP two ways, each against the same run without DP.

    ``layers all`` needs a BatchNorm-free model (smallcnn-gn) trained from scratch; ``layers head`` fine-tunes
    only the classifier of a pretrained public model (the run without DP fine-tunes the whole model from it).
    """
    runs: dict[str, tuple[Path, float]] = {}
    public = pretrain_public_model(root, a.public_scale, console)
    runs["public model, no federated training"] = (public, -1.0)
    init = {"model": "smallcnn", "init-weights": str(public)}
    console.print("FedAvg without DP from the public model (all layers) …")
    runs["no DP, from public model"] = (run(lc, root, "no-dp-public", a.rounds, a.sites, init), 0.0)
    for target in (8.0, 3.0):
        console.print(f"FedAvg with per-image DP, classifier only, target ε {target:g}, clipping norm {a.clip} …")
        dp = {**init, "dp-level": "image", "dp-layers": "head", "dp-target-epsilon": target, "dp-clipping-norm": a.clip}
        runs[f"per-image DP ε={target:g}, head"] = (
            run(lc, root, f"image-head-eps{target:g}", a.rounds, a.sites, dp),
            target,
        )
    if a.with_gn:
        console.print("FedAvg without DP, smallcnn-gn from scratch …")
        runs["no DP, smallcnn-gn"] = (run(lc, root, "no-dp-gn", a.rounds, a.sites, {"model": "smallcnn-gn"}), 0.0)
        dp = {"model": "smallcnn-gn", "dp-level": "image", "dp-target-epsilon": 8.0, "dp-clipping-norm": a.clip}
        console.print("FedAvg with per-image DP, all layers of smallcnn-gn, target ε 8 …")
        runs["per-image DP ε=8, all layers (gn)"] = (run(lc, root, "image-all-eps8", a.rounds, a.sites, dp), 8.0)
    return runs, "no DP, from public model"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", choices=("site", "image"), default="site", help="client-level (site) or per-image DP")
    p.add_argument("--clip", type=float, default=1.0, help="--level image: per-image gradient clipping norm")
    p.add_argument(
        "--public-scale",
        type=float,
        default=1.0,
        help="--level image: size of the public cohort (1.0: about 700 images)",
    )
    p.add_argument("--with-gn", action="store_true", help="--level image: also smallcnn-gn from scratch, all layers")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, default=None)
    a = p.parse_args(argv)
    console = report_console(stderr=a.json)
    root = Path(a.keep or tempfile.mkdtemp(prefix="fedrad-bench-dp-")).resolve()
    cohort = write_cohort(root / "cohort", n_sites=a.sites, unseen=1, scale=a.scale, seed=0)
    sites = {s.name: s.path for s in cohort if not s.name.startswith("unseen")}
    unseen = next(s for s in cohort if s.name.startswith("unseen"))
    results: dict[str, dict] = {}
    with ProcessSet(root / "logs") as ps:
        lc = start_loopback_consortium(ps, root, sites, image_size=IMAGE_SIZE, name="Bench")
        wait_online(lc)
        if a.level == "image":
            runs, baseline = image_level_runs(lc, root, a, console)
            norms, clip = [], a.clip
        else:
            runs, baseline, norms, clip = site_level_runs(lc, root, a, console)
    for name, (run_dir, z) in runs.items():
        if z < 0:  # a model file, not a run: the unseen site only
            results[name] = {
                "noise_multiplier": 0.0,
                "clipping_norm": None,
                "epsilon": None,
                "held_out_auc": None,
                "unseen_auc": round(unseen_auc(run_dir, unseen), 4),
            }
            continue
        last = read_metrics(run_dir)[-1]
        results[name] = {
            "noise_multiplier": (last.get("train") or {}).get("dp-noise-multiplier", z) if z else 0.0,
            "clipping_norm": clip if z else None,
            "epsilon": (last.get("privacy") or {}).get("epsilon"),
            "held_out_auc": (last.get("eval") or {}).get("auc"),
            "unseen_auc": round(unseen_auc(run_dir, unseen), 4),
        }
    base = results[baseline]
    for r in results.values():
        r["unseen_auc_cost"] = round(base["unseen_auc"] - r["unseen_auc"], 4)
        if r["held_out_auc"] is not None and base["held_out_auc"] is not None:
            r["held_out_auc_cost"] = round(base["held_out_auc"] - r["held_out_auc"], 4)
    report = {
        "level": a.level,
        "rounds": a.rounds,
        "sites": a.sites,
        "baseline": baseline,
        "global_update_norms": [round(n, 4) for n in norms],
        "results": results,
    }
    if a.json:
        print(json.dumps(report, indent=2))
        return
    what = "Per-image DP (DP-SGD at each site)" if a.level == "image" else "Client-level DP"
    table = Table(
        title=f"{what}, FedAvg, {a.sites} sites, {a.rounds} rounds × {EPOCHS} epochs (δ = 1e-5); cost vs {baseline}"
    )
    for col in ("run", "noise multiplier", "clipping norm", "ε", "held-out AUC", "cost", "unseen AUC", "cost"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['noise_multiplier']:.3g}",
            str(r["clipping_norm"]),
            str(r["epsilon"]),
            str(r["held_out_auc"]),
            str(r.get("held_out_auc_cost", "")),
            str(r["unseen_auc"]),
            str(r["unseen_auc_cost"]),
        )
    console.print(table)
    console.print(json.dumps(report))


def site_level_runs(lc, root: Path, a, console) -> tuple[dict[str, tuple[Path, float]], str, list[float], float]:  # noqa: ANN001
    """No DP, then client-level DP at ε ≈ 8 and 30, clipping at the median global update of the run without DP."""
    console.print("FedAvg without DP …")
    base_dir = run(lc, root, "no-dp", a.rounds, a.sites, {})
    norms = global_update_norms(base_dir, a.rounds)
    clip = round(statistics.median(norms), 4)
    runs = {"no DP": (base_dir, 0.0)}
    for target in (8.0, 30.0):
        z = noise_for_epsilon(target, a.rounds)
        console.print(f"FedAvg with DP, target ε ≈ {target:g}: noise multiplier {z}, clipping norm {clip} …")
        runs[f"DP ε≈{target:g}"] = (
            run(lc, root, f"dp-eps{target:g}", a.rounds, a.sites, {"dp-noise-multiplier": z, "dp-clipping-norm": clip}),
            z,
        )
    return runs, "no DP", norms, clip


if __name__ == "__main__":
    main()
