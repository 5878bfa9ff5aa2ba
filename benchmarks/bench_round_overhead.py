"""Round overhead on Flower's deployment engine: FedRad (warm worker / in-process) against bare Flower, same run.

    .venv/bin/python -m benchmarks.bench_round_overhead [--rounds 6] [--sites 3] [--json]

One loopback consortium (TLS, site keys, fleet proxy, 3 SuperNodes with warm
workers; deploy/loopback.py) runs three apps one after the other on the same
processes, each for ``--rounds`` train-only rounds on a small synthetic cohort:

1. **bare Flower**: ``benchmarks/bare_flower`` (``FedAvg().start()``, a
   ClientApp that imports torch per message) — the baseline;
2. **FedRad, warm worker**: the real ServerApp/ClientApp, the ClientApp
   forwarding to each site's warm worker;
3. **FedRad, in-process**: the same after the workers are stopped (the
   ClientApp's fallback: torch and the data loaded per message).

Round overhead = round wall time − the slowest site's training time, median
over rounds 2..N (round 1 pays the FAB install and warm-up). FedRad's round
wall time is the time between successive rows of ``metrics.jsonl`` (so it
includes the checkpoint write); bare Flower's is the time between Flower's
per-round ``evaluate_fn`` calls. The breakdown splits the slowest site's
message wave into process start + imports (``flwr-clientapp`` spawn to
handler), handler work other than training, and what is left: Flower's
polling and transfer (the SuperNode's fixed 3 s idle sleep, SuperExec's
launch poll, the reply polls, Fleet pull/push through the proxy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.table import Table

from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.superlink import is_finished, stage_app, submit_run
from shared.cli_support import report_console
from shared.processes import ProcessSet
from shared.synth import write_cohort

BARE_APP = Path(__file__).resolve().parent / "bare_flower"
FEDRAD_CONFIG = {
    "round-timeout-s": 300,
    "seed": 0,
    "strategy": "fedavg",
    "classes": "normal,nodule",
    "image-size": 32,
    "model": "smallcnn",
    "batch-size": 16,
    "lr": 0.001,
    "augment": 0.5,
    "local-epochs": 1,
    "consortium": "Bench",
}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def wait_online(lc, timeout: float = 180) -> None:  # noqa: ANN001 - LoopbackConsortium
    """Every site of ``lc`` online, or exit naming those that are not."""
    try:
        lc.wait_until_online(timeout)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def run_bare(lc, root: Path, rounds: int, sites: int) -> list[dict]:  # noqa: ANN001
    app = root / "bare-app"
    shutil.copytree(BARE_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    out = root / "bare-rounds.json"
    run_id = submit_run(lc.link, app, {"num-server-rounds": rounds, "min-sites": sites, "out-file": str(out)})
    with lc.link.control() as control:
        info = control.wait_for_run(run_id, timeout=rounds * 120 + 120, poll=0.5)
    if info["status"] != "finished:completed":
        raise SystemExit(f"bare Flower run failed: {info}")
    return [
        {
            "round": r["round"],
            "wall_s": r["seconds"],
            "train_s": r.get("train-s", 0.0),
            "startup_s": r.get("startup-s", 0.0),
            "handler_s": r.get("handler-s", 0.0),
            "wave_s": r["seconds"],
            "aggregate_s": 0.0,
        }
        for r in json.loads(out.read_text())
    ]


def run_fedrad(lc, root: Path, label: str, rounds: int, sites: int) -> list[dict]:  # noqa: ANN001
    run_dir = root / "runs" / label
    config = {
        **FEDRAD_CONFIG,
        "run-dir": str(run_dir),
        "num-server-rounds": rounds,
        "evaluate-every": rounds + 1,
        "min-sites": sites,
    }
    app = stage_app(root / f"app-{label}", REPO, config)
    run_id = submit_run(lc.link, app)
    arrivals: dict[int, float] = {}
    deadline = time.monotonic() + rounds * 120 + 120
    with lc.link.control() as control:
        while True:  # timestamp each metrics row as it lands: the round's true wall time, checkpoint included
            now = time.monotonic()
            if run_dir.is_dir():
                for row in read_metrics(run_dir):
                    arrivals.setdefault(row["round"], now)
            status = control.run(run_id)["status"]
            if is_finished(status) or now > deadline:
                break
            time.sleep(0.1)
    if status != "finished:completed":
        raise SystemExit(f"FedRad run ({label}) ended {status}; see {run_dir} and logs under {lc.root}")
    out = []
    for row in read_metrics(run_dir):
        r, t = row["round"], row["train"]
        if r - 1 not in arrivals:
            continue
        out.append(
            {
                "round": r,
                "wall_s": arrivals[r] - arrivals[r - 1],
                "train_s": t.get("train-s", 0.0),
                "startup_s": t.get("startup-s", 0.0),
                "handler_s": t.get("handler-s", 0.0),
                "wave_s": row["timing"]["train_wave_s"],
                "aggregate_s": row["timing"]["aggregate_s"],
                "warm": t.get("warm-worker", 0.0),
            }
        )
    return out


def summarize(rows: list[dict]) -> dict:
    """Medians over rounds ≥ 2 of the round and its parts (seconds)."""
    rows = [r for r in rows if r["round"] >= 2]
    pick = lambda f: _median([f(r) for r in rows])  # noqa: E731
    return {
        "rounds": len(rows),
        "round_s": pick(lambda r: r["wall_s"]),
        "slowest_train_s": pick(lambda r: r["train_s"]),
        "overhead_s": pick(lambda r: r["wall_s"] - r["train_s"]),
        "process_start_imports_s": pick(lambda r: r["startup_s"]),
        "handler_other_s": pick(lambda r: r["handler_s"] - r["train_s"]),
        "flower_polling_transfer_s": pick(lambda r: r["wave_s"] - r["startup_s"] - r["handler_s"]),
        "aggregation_checkpoint_s": pick(lambda r: r["wall_s"] - r["wave_s"]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.1, help="synthetic site size relative to the defaults")
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    a = p.parse_args(argv)
    console = report_console(stderr=a.json)
    root = Path(a.keep or tempfile.mkdtemp(prefix="fedrad-bench-round-")).resolve()
    cohort = write_cohort(root / "cohort", n_sites=a.sites, unseen=0, scale=a.scale, seed=0)
    t0 = time.monotonic()
    with ProcessSet(root / "logs") as ps:
        lc = start_loopback_consortium(ps, root, {s.name: s.path for s in cohort}, image_size=32, name="Bench")
        wait_online(lc)
        console.print(f"{a.sites} sites online after {time.monotonic() - t0:.1f} s; logs in {root / 'logs'}")
        results = {}
        console.print("bare Flower …")
        results["bare Flower"] = summarize(run_bare(lc, root, a.rounds, a.sites))
        console.print("FedRad, warm worker …")
        warm_rows = run_fedrad(lc, root, "warm", a.rounds, a.sites)
        results["FedRad warm worker"] = summarize(warm_rows)
        for site in lc.sites.values():
            if site.worker is not None:
                site.worker.stop()
        console.print("FedRad, in-process (workers stopped) …")
        results["FedRad in-process"] = summarize(run_fedrad(lc, root, "in-process", a.rounds, a.sites))
    base = results["bare Flower"]["overhead_s"]
    for r in results.values():
        r["overhead_ratio_vs_bare"] = round(r["overhead_s"] / base, 3) if base else None
    report = {
        "sites": a.sites,
        "rounds": a.rounds,
        "median_over_rounds": "2..N",
        "results": results,
        "warm_worker_fraction": _median([r["warm"] for r in warm_rows]),
    }
    if a.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(
        title=f"Round overhead, {a.sites} sites on loopback (TLS, site keys, proxy), median of rounds 2..{a.rounds}"
    )
    cols = [
        "round_s",
        "slowest_train_s",
        "overhead_s",
        "overhead_ratio_vs_bare",
        "process_start_imports_s",
        "handler_other_s",
        "flower_polling_transfer_s",
        "aggregation_checkpoint_s",
    ]
    table.add_column("app")
    for col in cols:
        table.add_column(col.replace("_", " "), justify="right")
    for name, r in results.items():
        table.add_row(name, *(str(r[c]) for c in cols))
    console.print(table)
    console.print(json.dumps(report))


if __name__ == "__main__":
    main()
