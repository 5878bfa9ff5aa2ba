"""Upload bytes and model quality: float32 vs fp16 site uploads, same sites, seeds and rounds.

Each arm is a real FedRad federation on Flower's simulation engine (the
production ServerApp and ClientApp, outbound guard and audit log included).
Bytes are what the sites' audit logs say left them in training replies; AUC
is the final global model's on every site's held-out patients (the split the
ClientApp makes), averaged over sites, then over seeds. Target (issue 6):
fp16 ≤ 0.55× the bytes at ≤ 0.005 AUC cost.

    .venv/bin/python -m benchmarks.bench_compression [--cohort DIR] [--seeds 2] [--rounds 8] [--local-epochs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generalization import BenchConfig  # noqa: E402
from benchmarks.simulation import prepare_site, run_simulated  # noqa: E402
from client.federated import load_site_data  # noqa: E402
from shared.modelfile import load_model_file  # noqa: E402
from shared.synth import write_cohort  # noqa: E402
from shared.tasks import TaskSpec  # noqa: E402
from shared.tasks.classification.evaluation import auc_score  # noqa: E402

MODES = ("none", "fp16")


def upload_bytes(audit_log: Path) -> list[int]:
    """Bytes of every training reply in one site's audit log (only this run's entries: one log per arm)."""
    out = []
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("type") == "train" and "bytes" in entry:
            out.append(int(entry["bytes"]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, help="A synth cohort (site-1..3); default: write one at --scale")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--difficulty", type=float, default=0.3, help="cohort difficulty (0.5 is the default cohort)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = BenchConfig(rounds=args.rounds, local_epochs=args.local_epochs)
    task = TaskSpec("classification", tuple(cfg.classes), cfg.model, cfg.image_size)
    rows: dict[str, dict[str, list]] = {m: {"auc": [], "bytes": [], "seconds": []} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="fedrad-compression-") as tmp:
        root = Path(tmp)
        cohort = args.cohort or root / "cohort"
        if args.cohort is None:
            write_cohort(cohort, n_sites=3, unseen=0, scale=args.scale, difficulty=args.difficulty)
        names = sorted(p.name for p in cohort.iterdir() if p.name.startswith("site-"))
        for seed in range(args.seeds):
            for mode in MODES:
                arm = root / f"{mode}-seed{seed}"  # fresh site work dirs: one audit log per arm
                sites = [
                    prepare_site(
                        arm / "sites",
                        n,
                        cohort / n / "dicom",
                        cohort / n / "labels.csv",
                        cfg.classes,
                        cfg.image_size,
                        root / "cache" / n,
                    )
                    for n in names
                ]
                run_dir = arm / "run"
                t0 = time.monotonic()
                run_simulated(
                    {**cfg.run_config("fedavg", seed, run_dir, len(sites)), "compression": mode}, sites, cpus=2
                )
                rows[mode]["seconds"].append(time.monotonic() - t0)
                model = load_model_file(run_dir / "latest.pt").model.eval()
                aucs = [auc_score(model, load_site_data(s.site_yaml, task, seed, s.name).held_out) for s in sites]
                rows[mode]["auc"].append(statistics.fmean(aucs))
                rows[mode]["bytes"] += [b for s in sites for b in upload_bytes(s.work_dir / "audit" / "outbound.jsonl")]
                print(f"seed {seed} {mode}: mean site AUC {rows[mode]['auc'][-1]:.4f}", file=sys.stderr, flush=True)
    base_bytes, base_auc = statistics.fmean(rows["none"]["bytes"]), statistics.fmean(rows["none"]["auc"])
    result = {
        "config": {
            "seeds": args.seeds,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "scale": args.scale,
            "difficulty": args.difficulty,
            "sites": len(names),
            "strategy": "fedavg",
            "engine": "Flower simulation engine (Ray), production ServerApp/ClientApp",
        },
        "modes": {
            m: {
                "bytes_per_site_round": round(statistics.fmean(r["bytes"])),
                "bytes_ratio": round(statistics.fmean(r["bytes"]) / base_bytes, 4),
                "auc_mean": round(statistics.fmean(r["auc"]), 4),
                "auc_per_seed": [round(a, 4) for a in r["auc"]],
                "auc_cost": round(base_auc - statistics.fmean(r["auc"]), 4),
                "seconds_per_run": round(statistics.fmean(r["seconds"]), 1),
            }
            for m, r in rows.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'mode':6s} {'B/site/round':>13s} {'× none':>7s} {'AUC':>7s} {'AUC cost':>9s} {'s/run':>6s}  per seed")
    for m, r in result["modes"].items():
        print(
            f"{m:6s} {r['bytes_per_site_round']:13,d} {r['bytes_ratio']:7.3f} {r['auc_mean']:7.4f} {r['auc_cost']:+9.4f} "
            f"{r['seconds_per_run']:6.1f}  {r['auc_per_seed']}"
        )


if __name__ == "__main__":
    main()
