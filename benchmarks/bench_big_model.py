"""A ResNet-50-sized model over the wire: round time and bytes against a raw HTTPS copy, proxy memory, fp16.

Issue 22, finding 5. One loopback consortium (TLS, site keys, the fleet proxy, 1-2 SuperNodes with warm
workers; deploy/loopback.py) runs three train-only federations one after the other on the same processes:

1. **tiny**: ``smallcnn`` (79k parameters): the round's fixed cost (Flower's polling, process starts);
2. **big**: ``resnet50`` (23.5M parameters, 94 MB float32) at 32 px on a handful of images, so training is
   negligible and what the round adds over *tiny* is moving the model;
3. **big fp16**: the same with ``compression: fp16`` (site uploads in float16).

Model cost of a round = (train wave − site training + aggregation + checkpoint) of *big* minus the same of
*tiny*, median of rounds 2..R (round 1 pays the FAB install and warm-up). It is set against a raw HTTPS copy of
the same bytes on the same loopback (benchmarks/raw_copy.py: every site downloads the model, then uploads its
update, at once), measured right after each arm. Bytes: down = the server's model bytes per site, up = what each
site's audit log says left it. Memory: peak RSS (VmHWM) of the fleet proxy and the SuperLink before and after
each arm, and the largest ServerApp and ClientApp seen while it ran.

Run: ``fedrad-bench big-model [--sites 1] [--rounds 3] [--model resnet50] [--json]`` (Linux: reads /proc).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.raw_copy import raw_round_s, start_raw_server
from deploy.loopback import REPO, LoopbackConsortium, start_loopback_consortium
from server.checkpoints import read_metrics
from server.superlink import stage_app, submit_run
from shared.processes import ProcessSet
from shared.synth import write_cohort

IMAGE_SIZE = 32  # the smallest a 32-fold downsampling backbone takes: training costs next to nothing
RUN_CONFIG = {
    "round-timeout-s": 900,
    "seed": 0,
    "strategy": "fedavg",
    "classes": "normal,nodule",
    "image-size": IMAGE_SIZE,
    "batch-size": 32,
    "lr": 0.001,
    "augment": 0.0,
    "local-epochs": 1,
    "consortium": "Bench",
}
CHECKPOINT = re.compile(r"round=(\d+) .*?checkpoint_s=([0-9.]+)")
TARGET_RATIO = 1.3  # issue 22: a 100 MB model's round within 1.3x the raw transfer time


@dataclass(frozen=True)
class Arm:
    label: str
    task_type: str
    model: str
    compression: str = "none"


@dataclass
class RoundCost:
    """One round's seconds, split the way the benchmark subtracts them."""

    round: int
    wave_s: float  # train messages out → every reply in (the server's train_wave_s)
    train_s: float  # the sites' training (mean over sites)
    site_other_s: float  # ClientApp start + handler − training: decode, guard, digests, worker socket
    aggregate_s: float
    checkpoint_s: float

    @property
    def cost_s(self) -> float:
        """Everything the round spent that was not training."""
        return self.wave_s - self.train_s + self.aggregate_s + self.checkpoint_s


@dataclass
class ArmResult:
    arm: Arm
    params: int = 0
    rounds: list[RoundCost] = field(default_factory=list)
    down_bytes: int = 0  # per site per round: the global model
    up_bytes: int = 0  # per site per round: the site's reply arrays (audit log)
    raw_s: float = float("nan")
    flower_bytes: dict[str, int] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind of process over the arm
    fleet_hops: list[tuple[float, float]] = field(default_factory=list)  # the first site's (pull s, push s)


# ---------------------------------------------------------------- arithmetic (tests/test_bench_big_model.py)


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def model_cost_s(big: list[RoundCost], tiny: list[RoundCost]) -> float:
    """What the big model adds to a round: median non-training cost of *big* minus that of *tiny* (rounds ≥ 2)."""
    pick = lambda rows: median_of([r.cost_s for r in rows if r.round >= 2])  # noqa: E731
    return pick(big) - pick(tiny)


def round_bytes(sites: int, down: int, up: int) -> int:
    """Bytes a train round moves over the wire: every site downloads ``down`` and uploads ``up``."""
    return sites * (down + up)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def parse_checkpoint_seconds(log: str) -> dict[int, float]:
    """round → the ServerApp's ``checkpoint_s`` from its log lines (``round=N ... checkpoint_s=X``)."""
    return {int(m.group(1)): float(m.group(2)) for m in CHECKPOINT.finditer(log)}


STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) ")


def fleet_hops(supernode_log: str, run_id: int) -> list[tuple[float, float]]:
    """(pull s, push s) of each train message of run ``run_id``, from the SuperNode's own log lines.

    Pull: ``Receiving: train message`` → ``Received successfully`` (the message and its objects from the
    SuperLink, through the proxy); push: ``Sending: train message`` → ``Sent successfully``.
    """
    hops: list[tuple[float, float]] = []
    current, pull, t_recv, t_send = None, None, None, None
    for line in supernode_log.splitlines():
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        t = int(stamp.group(1)) * 3600 + int(stamp.group(2)) * 60 + float(stamp.group(3))
        if (run := re.search(r"\[RUN (\d+)\]", line)) is not None:
            current = int(run.group(1))
        elif current != run_id:
            continue
        elif "Receiving: train message" in line:
            t_recv = t
        elif "Received successfully" in line and t_recv is not None:
            pull, t_recv = (t - t_recv) % 86400, None
        elif "Sending: train message" in line:
            t_send = t
        elif "Sent successfully" in line and t_send is not None and pull is not None:
            hops.append((round(pull, 2), round((t - t_send) % 86400, 2)))
            pull, t_send = None, None
    return hops


def upload_bytes(audit_log: Path, run_id: int) -> list[int]:
    """Bytes of each training reply of run ``run_id`` in one site's audit log."""
    if not audit_log.is_file():
        return []
    out = []
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("run") == run_id and entry.get("type") == "train" and "bytes" in entry:
            out.append(int(entry["bytes"]))
    return out


# ---------------------------------------------------------------- memory


def _status_mb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# what a process is, by a word of its command line (first match wins)
KINDS = {
    "fleet_proxy": "proxy",
    "flower-superlink": "SuperLink",
    "flwr-serverapp": "ServerApp",
    "flower-supernode": "SuperNode",
    "flwr-clientapp": "ClientApp",
    "site_worker": "site worker",
    "superexec": "SuperExec",
    "raw_copy": "raw HTTPS",
}


def process_kind(cmdline: str) -> str | None:
    return next((kind for word, kind in KINDS.items() if word in cmdline), None)


class ProcessSampler:
    """CPU seconds and largest RSS per kind of process while an arm runs, sampled every 0.2 s.

    Why sample: a ServerApp and each ClientApp exit with their run or message, so neither their VmHWM nor their
    CPU time can be read afterwards; the CPU split says which hop a slow round spends its time in.
    """

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak_mb: dict[str, float] = {}
        self._cpu0: dict[int, float] = {}  # CPU seconds a process had already used when first seen at the start
        self._cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self, first: bool = False) -> None:
        for root in self.roots:
            try:
                procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    kind = process_kind(" ".join(proc.cmdline()))
                    if kind is None:
                        continue
                    with proc.oneshot():
                        times, rss = proc.cpu_times(), proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                cpu = times.user + times.system
                if first:
                    self._cpu0[proc.pid] = cpu
                self._cpu[proc.pid] = (kind, cpu)
                self.peak_mb[kind] = max(self.peak_mb.get(kind, 0.0), rss)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds per kind of process between start and stop."""
        out: dict[str, float] = {}
        for pid, (kind, cpu) in self._cpu.items():
            out[kind] = out.get(kind, 0.0) + cpu - self._cpu0.get(pid, 0.0)
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def __enter__(self) -> ProcessSampler:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------- one arm


def run_arm(lc: LoopbackConsortium, ps: ProcessSet, root: Path, arm: Arm, rounds: int, raw_port: int) -> ArmResult:
    """``rounds`` train-only rounds of ``arm`` on ``lc``, then the raw copy of the bytes one of them moved."""
    sites = len(lc.sites)
    run_dir = root / "runs" / arm.label
    config = {
        **RUN_CONFIG,
        "task-type": arm.task_type,
        "model": arm.model,
        "compression": arm.compression,
        "run-dir": str(run_dir),
        "num-server-rounds": rounds,
        "evaluate-every": rounds + 1,  # the last round still evaluates: its train wave is timed on its own
        "min-sites": sites,
    }
    proxy_pid, link_pid = lc.proxy_process.pid, lc.link.proc.pid  # type: ignore[union-attr]
    before = {"proxy_peak": _status_mb(proxy_pid, "VmHWM"), "superlink_peak": _status_mb(link_pid, "VmHWM")}
    app = stage_app(root / f"app-{arm.label}", REPO, config)
    with ProcessSampler([p.pid for p in ps.procs]) as sampler:
        run_id = submit_run(lc.link, app)
        with lc.link.control() as control:
            info = control.wait_for_run(run_id, timeout=rounds * 600 + 300, poll=0.5)
            logs = control.logs(run_id)
    if info["status"] != "finished:completed":
        raise SystemExit(f"{arm.label}: the run ended {info['status']}; logs under {lc.root}\n{logs[-3000:]}")
    result = ArmResult(arm)
    match = re.search(r" params=(\d+) bytes=(\d+)", logs)
    if match:
        result.params, result.down_bytes = int(match.group(1)), int(match.group(2))
    checkpoints = parse_checkpoint_seconds(logs)
    for row in read_metrics(run_dir):
        t, timing = row["train"], row["timing"]
        result.rounds.append(
            RoundCost(
                round=row["round"],
                wave_s=timing["train_wave_s"],
                train_s=float(t.get("train-s", 0.0)),
                site_other_s=float(t.get("startup-s", 0.0)) + float(t.get("handler-s", 0.0)) - t.get("train-s", 0.0),
                aggregate_s=timing["aggregate_s"],
                checkpoint_s=checkpoints.get(row["round"], 0.0),
            )
        )
    ups = [
        b
        for s in lc.sites.values()
        for b in upload_bytes(s.site_yaml.parent / "work" / "audit" / "outbound.jsonl", run_id)
    ]
    result.up_bytes = round(statistics.fmean(ups)) if ups else 0
    result.flower_bytes = {"sent": int(info.get("bytes-sent") or 0), "recv": int(info.get("bytes-recv") or 0)}
    result.memory_mb = {
        "proxy_peak_before": round(before["proxy_peak"], 1),
        "proxy_peak_after": round(_status_mb(proxy_pid, "VmHWM"), 1),
        "proxy_rss_after": round(_status_mb(proxy_pid, "VmRSS"), 1),
        "superlink_peak_before": round(before["superlink_peak"], 1),
        "superlink_peak_after": round(_status_mb(link_pid, "VmHWM"), 1),
        "serverapp_peak": round(sampler.peak_mb.get("ServerApp", 0.0), 1),
        "clientapp_peak": round(sampler.peak_mb.get("ClientApp", 0.0), 1),
    }
    result.cpu_s = sampler.cpu_s()
    result.fleet_hops = fleet_hops(next(iter(lc.sites.values())).supernode.log_text(), run_id)
    result.raw_s = median_of(
        [raw_round_s(raw_port, lc.tls.ca_cert, sites, result.down_bytes, result.up_bytes) for _ in range(3)]
    )
    return result


# ---------------------------------------------------------------- report


def summary(results: list[ArmResult], sites: int) -> dict[str, Any]:
    tiny = results[0]
    arms: dict[str, Any] = {}
    for r in results:
        later = [c for c in r.rounds if c.round >= 2]
        entry: dict[str, Any] = {
            "model": r.arm.model,
            "compression": r.arm.compression,
            "params": r.params,
            "bytes_down_per_site": r.down_bytes,
            "bytes_up_per_site": r.up_bytes,
            "bytes_per_round": round_bytes(sites, r.down_bytes, r.up_bytes),
            "flower_run_bytes": r.flower_bytes,
            "round_s": round(median_of([c.wave_s + c.aggregate_s + c.checkpoint_s for c in later]), 2),
            "train_s": round(median_of([c.train_s for c in later]), 2),
            "site_other_s": round(median_of([c.site_other_s for c in later]), 2),
            "aggregate_s": round(median_of([c.aggregate_s for c in later]), 2),
            "checkpoint_s": round(median_of([c.checkpoint_s for c in later]), 2),
            "non_training_s": round(median_of([c.cost_s for c in later]), 2),
            "raw_https_s": round(r.raw_s, 3),
            "memory_mb": r.memory_mb,
            "cpu_s_per_arm": r.cpu_s,
            "fleet_pull_s": round(median_of([p for p, _ in r.fleet_hops[1:]]), 2),
            "fleet_push_s": round(median_of([p for _, p in r.fleet_hops[1:]]), 2),
            "rounds": [c.__dict__ for c in r.rounds],
        }
        if r is not tiny:
            cost = model_cost_s(r.rounds, tiny.rounds)
            entry["model_cost_s"] = round(cost, 2)
            entry["ratio_vs_raw"] = round(ratio(cost, r.raw_s), 2)
        arms[r.arm.label] = entry
    big = [a for a in arms.values() if "ratio_vs_raw" in a]
    if len(big) == 2:
        arms["big-fp16"]["bytes_vs_big"] = round(ratio(big[1]["bytes_per_round"], big[0]["bytes_per_round"]), 3)
        arms["big-fp16"]["upload_vs_big"] = round(ratio(big[1]["bytes_up_per_site"], big[0]["bytes_up_per_site"]), 3)
    return {"sites": sites, "target_ratio": TARGET_RATIO, "arms": arms}


def print_table(report: dict[str, Any], rounds: int) -> None:
    from rich.table import Table

    from shared.cli_support import report_console

    table = Table(
        title=f"{report['sites']} site(s) on loopback (TLS, site keys, fleet proxy), median of rounds 2..{rounds}"
    )
    cols = [
        ("params", "params", "{:,}"),
        ("MB down/site", "bytes_down_per_site", "mb"),
        ("MB up/site", "bytes_up_per_site", "mb"),
        ("round s", "round_s", "{}"),
        ("training s", "train_s", "{}"),
        ("site other s", "site_other_s", "{}"),
        ("aggregate s", "aggregate_s", "{}"),
        ("checkpoint s", "checkpoint_s", "{}"),
        ("model cost s", "model_cost_s", "{}"),
        ("raw HTTPS s", "raw_https_s", "{}"),
        ("× raw", "ratio_vs_raw", "{}"),
    ]
    table.add_column("arm")
    for title, _, _ in cols:
        table.add_column(title, justify="right")
    for label, a in report["arms"].items():
        cells = []
        for _, key, fmt in cols:
            v = a.get(key)
            cells.append("–" if v is None else f"{v / 1e6:.1f}" if fmt == "mb" else fmt.format(v))
        table.add_row(label, *cells)
    console = report_console()
    console.print(table)
    mem = Table(title="peak RSS, MB (VmHWM before → after the arm; per-run processes: largest sampled)")
    for col in ("arm", "proxy", "SuperLink", "ServerApp", "ClientApp"):
        mem.add_column(col, justify="right" if col != "arm" else "left")
    for label, a in report["arms"].items():
        m = a["memory_mb"]
        mem.add_row(
            label,
            f"{m['proxy_peak_before']} → {m['proxy_peak_after']}",
            f"{m['superlink_peak_before']} → {m['superlink_peak_after']}",
            str(m["serverapp_peak"]),
            str(m["clientapp_peak"]),
        )
    console.print(mem)
    fp16 = report["arms"].get("big-fp16", {})
    if "bytes_vs_big" in fp16:
        console.print(
            f"fp16: upload × {fp16['upload_vs_big']} of float32, whole round (down + up) × {fp16['bytes_vs_big']} "
            f"(the global model still goes down in float32); target round ≤ {report['target_ratio']}× raw HTTPS"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--rounds", type=int, default=3, help="train rounds per arm (round 1 is not counted)")
    parser.add_argument("--model", default="resnet50", help="the big model (default resnet50: 23.5M parameters)")
    parser.add_argument("--scale", type=float, default=0.03, help="synthetic site size (a handful of images)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument(
        "--superlink-state",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="the SuperLink's --database as FedRad deploys it (sqlite), or in memory: how much Flower's object store costs",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 pays the FAB install and is not counted)")
    from shared.models import MODEL_BUILDERS

    if args.model not in MODEL_BUILDERS:
        parser.error(f"--model {args.model!r}: not a classification architecture ({', '.join(MODEL_BUILDERS)})")
    task_type, model = "classification", args.model
    arms = [
        Arm("tiny", "classification", "smallcnn"),
        Arm("big", task_type, model),
        Arm("big-fp16", task_type, model, "fp16"),
    ]
    say = (lambda text: print(text, file=__import__("sys").stderr, flush=True)) if args.json else print
    root = Path(args.keep or tempfile.mkdtemp(prefix="fedrad-bench-big-")).resolve()
    cohort = write_cohort(root / "cohort", n_sites=args.sites, unseen=0, scale=args.scale, seed=0)
    t0 = time.monotonic()
    with ProcessSet(root / "logs") as ps:
        lc = start_loopback_consortium(
            ps,
            root,
            {s.name: s.path for s in cohort},
            image_size=IMAGE_SIZE,
            name="Bench",
            persistent_state=args.superlink_state == "sqlite",
        )
        _, raw_port = start_raw_server(ps, lc.tls.server_cert, lc.tls.server_key, REPO)
        lc.wait_until_online()
        say(f"{args.sites} site(s) online after {time.monotonic() - t0:.0f} s; logs in {root / 'logs'}")
        results = []
        for arm in arms:
            t_arm = time.monotonic()
            results.append(run_arm(lc, ps, root, arm, args.rounds, raw_port))
            say(f"{arm.label}: {args.rounds} rounds in {time.monotonic() - t_arm:.0f} s")
    report = {
        **summary(results, args.sites),
        "rounds": args.rounds,
        "image_size": IMAGE_SIZE,
        "superlink_state": args.superlink_state,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report, args.rounds)


if __name__ == "__main__":
    main()
