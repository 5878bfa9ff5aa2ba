"""Ingest benchmark: FedRad's scan+decode+preprocess+cache vs a bare pydicom loop, and the cache speed-up.

Prints, on the same files in the same run:
- first-pass ingest throughput vs ``pydicom.dcmread(f).pixel_array`` (ratio; target ≥ 0.9×),
- a fresh process's load from the warm disk cache vs the first pass (ratio; target ≥ 20×),
- an epoch of random batches read from the cache's shards (what training reads) vs the first pass
  (the key keeps its old name, ``in_memory_epoch_speedup``).

Usage: python benchmarks/bench_ingest.py [--scale 0.3] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
import torch

from shared.config import SiteDataConfig
from shared.packed import PackedImages, to_tensor
from shared.site_data import load_site_dataset
from shared.synth import write_cohort


def bare_pydicom(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        try:
            _ = pydicom.dcmread(f).pixel_array
        except Exception:
            pass
    return time.perf_counter() - start


def fedrad_load(site: Path, cache: Path) -> tuple[float, PackedImages]:
    cfg = SiteDataConfig(data=site / "dicom", labels=site / "labels.csv", cache_dir=cache)
    start = time.perf_counter()
    data, _ = load_site_dataset(cfg)
    return time.perf_counter() - start, data.images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.3, help="cohort size multiplier (1.0 ≈ 900 images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="fedrad-bench-ingest-"))
    try:
        sites = [Path(s.path) for s in write_cohort(work / "cohort", n_sites=3, seed=1, unseen=1, scale=args.scale)]
        rows = []
        for site in sites:
            files = sorted(p for p in (site / "dicom").rglob("*") if p.is_file())
            bare_pydicom(files)  # warm the OS page cache for both contenders
            bare, first, cached = [], [], []
            for r in range(args.repeats):
                cache = work / f"cache-{site.name}-{r}"
                bare.append(bare_pydicom(files))
                t_first, images = fedrad_load(site, cache)
                first.append(t_first)
                t_cached, images2 = fedrad_load(site, cache)  # new cache object: what a fresh process does
                cached.append(t_cached)
                assert torch.equal(to_tensor(images), to_tensor(images2)), "cache changed the data"
            epoch_start = time.perf_counter()
            perm = torch.randperm(images.shape[0])
            for i in range(0, len(perm), 32):
                images[perm[i : i + 32]].sum()
            mem_epoch = time.perf_counter() - epoch_start
            b, f1, c = statistics.median(bare), statistics.median(first), statistics.median(cached)
            import pydicom as _p

            ts = _p.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.name
            rows.append(
                {
                    "site": site.name,
                    "files": len(files),
                    "transfer_syntax": ts,
                    "bare_pydicom_files_per_s": len(files) / b,
                    "fedrad_first_pass_files_per_s": len(files) / f1,
                    "ingest_vs_bare_ratio": b / f1,
                    "fresh_process_cached_s": c,
                    "first_pass_s": f1,
                    "cached_speedup": f1 / c,
                    "in_memory_epoch_speedup": f1 / max(mem_epoch, 1e-9),
                }
            )
        total_files = sum(r["files"] for r in rows)
        overall = {
            "ingest_vs_bare_ratio": sum(r["files"] / r["bare_pydicom_files_per_s"] for r in rows)
            / sum(r["files"] / r["fedrad_first_pass_files_per_s"] for r in rows),
            "cached_speedup": sum(r["first_pass_s"] for r in rows) / sum(r["fresh_process_cached_s"] for r in rows),
            "files": total_files,
        }
        if args.json:
            print(json.dumps({"sites": rows, "overall": overall}, indent=2))
            return
        print(
            f"{'site':10} {'files':>5} {'transfer syntax':32} {'bare f/s':>9} {'fedrad f/s':>10} {'ratio':>6} {'cached x':>9} {'in-mem x':>9}"
        )
        for r in rows:
            print(
                f"{r['site']:10} {r['files']:5d} {r['transfer_syntax'][:32]:32} {r['bare_pydicom_files_per_s']:9.1f} "
                f"{r['fedrad_first_pass_files_per_s']:10.1f} {r['ingest_vs_bare_ratio']:6.2f} "
                f"{r['cached_speedup']:9.1f} {r['in_memory_epoch_speedup']:9.0f}"
            )
        print(
            f"overall: ingest {overall['ingest_vs_bare_ratio']:.2f}x bare pydicom (target >= 0.9), "
            f"fresh-process cached load {overall['cached_speedup']:.1f}x faster than the first pass (target >= 20)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
