"""``fedrad-bench scale --sites N``: a whole consortium of N synthetic hospitals on one machine.

Writes N synthetic sites (real DICOM, each with its own scanner profile) and
runs FedRad's production ServerApp and ClientApp over them on Flower's
simulation engine (:mod:`benchmarks.simulation`: ``flwr run`` on a simulation
SuperLink, Ray). It answers "what happens at 50 sites?" before any hospital is
asked: wall time per round, peak memory of the whole process tree (this
process, the SuperLink, ``flwr-simulation``, Ray's GCS and raylet, the actors) and
upload bytes per round, from the sites' own audit logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from benchmarks.simulation import prepare_site, run_simulated
from server.checkpoints import read_metrics
from shared.synth import cohort_profiles, write_site


@dataclass
class ScaleResult:
    sites: int
    images: int
    rounds: int
    strategy: str
    seconds: float  # the federated run: Ray start to last checkpoint
    seconds_per_round: float
    peak_rss_mb: float  # the whole process tree, sampled every 0.2 s
    upload_bytes_per_round: int  # all sites together, from their audit logs
    final_auc: float | None  # the last evaluation's site-weighted AUC

    def to_json(self) -> dict:
        return asdict(self)


class TreeMemory:
    """Peak resident memory of this process and all its descendants (psutil), sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak_bytes = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss(os.getpid()))
            self._stop.wait(self.every_s)


def tree_rss(root: int) -> int:
    """Sum of resident memory over ``root`` and its descendants, in bytes (psutil; 0 if ``root`` is gone)."""
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def write_sites(out: Path, n_sites: int, images_per_site: int, seed: int = 0) -> list[Path]:
    """N site folders (dicom/ + labels.csv), each from its own scanner profile."""
    folders = []
    for profile in cohort_profiles(n_sites, unseen=0, seed=seed):
        folder = Path(out) / profile.name
        if not (folder / "labels.csv").is_file():
            write_site(folder, profile, images_per_site, seed)
        folders.append(folder)
    return folders


def run_scale(
    out: Path,
    n_sites: int,
    images_per_site: int,
    rounds: int = 2,
    strategy: str = "fedavg",
    cpus: int = 2,
    image_size: int = 64,
    seed: int = 0,
) -> ScaleResult:
    """Write (or reuse) the sites under ``out/cohort`` and run one federation over all of them."""
    out = Path(out).resolve()
    folders = write_sites(out / "cohort", n_sites, images_per_site, seed)
    classes = ["normal", "nodule"]
    run_root = out / f"run-{n_sites}x{images_per_site}-{int(time.time())}"
    sites = [
        prepare_site(
            run_root / "sites", f.name, f / "dicom", f / "labels.csv", classes, image_size, out / "cache" / f.name
        )
        for f in folders
    ]
    run_dir = run_root / "run"
    config = {
        "num-server-rounds": rounds,
        "local-epochs": 1,
        "min-sites": n_sites,
        "round-timeout-s": 3600,
        "evaluate-every": rounds,
        "seed": seed,
        "strategy": strategy,
        "classes": ",".join(classes),
        "image-size": image_size,
        "run-dir": str(run_dir),
        "consortium": "Scale",
    }
    t0 = time.monotonic()
    with TreeMemory() as mem:
        run_simulated(config, sites, cpus=cpus)
    seconds = time.monotonic() - t0
    rows = read_metrics(run_dir)
    upload = 0
    for s in sites:
        log = s.work_dir / "audit" / "outbound.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        upload += sum(int(e.get("bytes", 0)) for e in entries if e.get("type") == "train")
    final = next((r.get("eval") or {} for r in reversed(rows) if r.get("eval")), {})
    return ScaleResult(
        sites=n_sites,
        images=n_sites * images_per_site,
        rounds=len(rows),
        strategy=strategy,
        seconds=round(seconds, 1),
        seconds_per_round=round(sum(r["seconds"] for r in rows) / max(1, len(rows)), 2),
        peak_rss_mb=round(mem.peak_bytes / 2**20, 1),
        upload_bytes_per_round=upload // max(1, len(rows)),
        final_auc=round(final["auc"], 4) if "auc" in final else None,
    )
