"""SecAgg+ against plain FedAvg in the same run: same aggregate, and what it costs in time and bytes.

    .venv/bin/python -m benchmarks.bench_secagg [--rounds 3] [--sites 3] [--scale 0.3] [--json]

One loopback consortium (deploy/loopback.py: TLS, site keys, warm workers)
trains FedAvg for ``--rounds`` rounds from the same seed, data and initial
weights three ways: plain, with secure aggregation (server/secure_aggregation.py),
and with secure aggregation plus client-level DP (the server adds its noise
to a sum it cannot take apart). Reported:

* **aggregate gap**: largest |weight difference| between the plain and the
  secure global model after round 1 (both aggregate the same site updates;
  SecAgg quantises them) and after the last round (training then diverges
  by tiny amounts from round to round);
* **time**: median round seconds and the training wave alone; ratio to plain;
* **bytes**: what each site sent per round for training, from its audit log
  (``client/audit.py``), plain replies vs the four SecAgg+ stages; ratio;
* held-out AUC of each final model (federated evaluation, last round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.table import Table

from benchmarks.bench_round_overhead import FEDRAD_CONFIG, wait_online
from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.superlink import stage_app, submit_run
from shared.cli_support import report_console
from shared.modelfile import load_model_file
from shared.processes import ProcessSet
from shared.synth import write_cohort

SECAGG = json.dumps({"threshold_fraction": 0.67})


def run(lc, root: Path, label: str, rounds: int, sites: int, extra: dict) -> tuple[Path, int]:  # noqa: ANN001
    run_dir = root / "runs" / label
    config = {
        **FEDRAD_CONFIG,
        "run-dir": str(run_dir),
        "num-server-rounds": rounds,
        "evaluate-every": rounds,
        "min-sites": sites,
        **extra,
    }
    run_id = submit_run(lc.link, stage_app(root / f"app-{label}", REPO, config))
    with lc.link.control() as control:
        info = control.wait_for_run(run_id, timeout=rounds * 300 + 120, poll=1.0)
    if info["status"] != "finished:completed":
        raise SystemExit(f"run {label} ended {info['status']}: {info.get('details')}; logs under {root / 'logs'}")
    return run_dir, run_id


def weight_gap(a: Path, b: Path) -> float:
    sa, sb = load_model_file(a).model.state_dict(), load_model_file(b).model.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def train_bytes_per_site_round(root: Path, run_id: int, rounds: int) -> float:
    """Mean bytes one site sent for training per round, by its own audit log."""
    totals = []
    for log in sorted((root / "sites").glob("*/work/audit/outbound.jsonl")):
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        totals.append(
            sum(e.get("bytes", 0) for e in entries if e.get("run") == run_id and str(e["type"]).startswith("train"))
        )
    return statistics.mean(totals) / rounds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, default=None)
    a = p.parse_args(argv)
    console = report_console(stderr=a.json)
    root = Path(a.keep or tempfile.mkdtemp(prefix="fedrad-bench-secagg-")).resolve()
    cohort = write_cohort(root / "cohort", n_sites=a.sites, unseen=0, scale=a.scale, seed=0)
    runs: dict[str, tuple[Path, int]] = {}
    with ProcessSet(root / "logs") as ps:
        lc = start_loopback_consortium(ps, root, {s.name: s.path for s in cohort}, name="Bench")
        wait_online(lc)
        for label, extra in (
            ("plain", {}),
            ("secagg", {"secagg": SECAGG}),
            ("secagg+dp", {"secagg": SECAGG, "dp-noise-multiplier": 1.0, "dp-clipping-norm": 0.5}),
        ):
            console.print(f"FedAvg, {label} …")
            runs[label] = run(lc, root, label, a.rounds, a.sites, extra)
    results: dict[str, dict] = {}
    plain_dir = runs["plain"][0]
    for label, (run_dir, run_id) in runs.items():
        rows = read_metrics(run_dir)
        results[label] = {
            "round_s": round(statistics.median(r["seconds"] for r in rows), 2),
            "train_wave_s": round(statistics.median(r["timing"]["train_wave_s"] for r in rows), 2),
            "train_bytes_per_site_round": round(train_bytes_per_site_round(root, run_id, a.rounds)),
            "held_out_auc": (rows[-1].get("eval") or {}).get("auc"),
            "epsilon": (rows[-1].get("privacy") or {}).get("epsilon"),
            "sites_answered": [r["sites_answered"] for r in rows],
        }
        if label == "secagg":
            results[label]["gap_round1"] = weight_gap(plain_dir / "round-0001.pt", run_dir / "round-0001.pt")
            results[label]["gap_last"] = weight_gap(plain_dir / "latest.pt", run_dir / "latest.pt")
    base = results["plain"]
    for r in results.values():
        r["time_ratio"] = round(r["round_s"] / base["round_s"], 2)
        r["train_wave_ratio"] = round(r["train_wave_s"] / base["train_wave_s"], 2)
        r["bytes_ratio"] = round(r["train_bytes_per_site_round"] / base["train_bytes_per_site_round"], 3)
    report = {"rounds": a.rounds, "sites": a.sites, "results": results}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Secure aggregation (SecAgg+) vs plain FedAvg, {a.sites} sites, {a.rounds} rounds")
    cols = (
        "run",
        "round s",
        "× plain",
        "train wave s",
        "× plain",
        "upload B/site/round",
        "× plain",
        "held-out AUC",
        "ε",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, r in results.items():
        table.add_row(
            label,
            str(r["round_s"]),
            str(r["time_ratio"]),
            str(r["train_wave_s"]),
            str(r["train_wave_ratio"]),
            str(r["train_bytes_per_site_round"]),
            str(r["bytes_ratio"]),
            str(r["held_out_auc"]),
            str(r["epsilon"]),
        )
    console.print(table)
    s = results["secagg"]
    console.print(
        f"largest weight gap secure vs plain: {s['gap_round1']:.2e} after round 1, {s['gap_last']:.2e} after round {a.rounds}"
    )
    console.print(json.dumps(report))


if __name__ == "__main__":
    main()
