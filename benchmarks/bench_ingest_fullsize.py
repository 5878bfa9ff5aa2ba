"""Ingest of full-size radiographs: FedRad's scan against bare ``pydicom.dcmread(f).pixel_array``.

CR/DX machines send 2,000–3,000 px images of 12–16 bits, uncompressed or JPEG 2000. The synthetic
cohort is 320 px, which hides what decoding such files costs. This script writes N full-size files
per encoding (a synthetic chest film upsampled, with detector noise so JPEG 2000 has real work), then
measures on the same files in the same run, with one worker and with every core the process may use:

- bare: ``pydicom.dcmread(f).pixel_array`` over the files (a process pool for "all workers"),
- FedRad: ``scan_site`` into an empty cache (hash, decode, window, resize, write the cache), the
  whole first ingest a site pays once.

Prints images/s of each and the ratio FedRad / bare. Usage:
``fedrad-bench ingest-fullsize [--n 12] [--sizes 2500,3000] [--image-size 512] [--json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from shared.config import PreprocessConfig
from shared.imaging.scan import scan_site
from shared.synth.anatomy import render_image, upsample
from shared.synth.cohort import cohort_profiles
from shared.synth.dicom_writer import ImageMeta, build_dataset, encode_pixels, write_dicom

ENCODINGS = {"uncompressed": ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless}


def allowed_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_fullsize(folder: Path, n: int, sizes: list[int], transfer_syntax: str, bits: int, seed: int) -> int:
    """``n`` full-size radiographs in ``folder``; returns the bytes written."""
    base = cohort_profiles(n_sites=1, unseen=0, seed=seed)[0]
    profile = dataclasses.replace(base, bits_stored=bits, transfer_syntax=transfer_syntax)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        side = sizes[i % len(sizes)]
        film = upsample(render_image(rng, base, has_nodule=bool(i % 2)), side)
        film = np.clip(film + rng.normal(0.0, 0.01, film.shape).astype(np.float32), 0.0, 1.0)
        uid = [generate_uid(entropy_srcs=[str(seed), transfer_syntax, str(i), part]) for part in "ABC"]  # ≤ 64 chars
        meta = ImageMeta(
            patient_id=f"FS{i:05d}",
            patient_name=f"FULLSIZE^{i}",
            birth_date="19600101",
            sex="F",
            study_uid=uid[0],
            series_uid=uid[1],
            sop_uid=uid[2],
            accession=f"FS{i:06d}",
            study_date="20260101",
            study_time="120000",
            study_id=str(i),
            kvp=120.0,
        )
        total += write_dicom(folder / f"IMG{i:05d}.dcm", build_dataset(encode_pixels(film, profile), profile, meta))
    return total


def _decode(path: str) -> int:
    return int(pydicom.dcmread(path).pixel_array.shape[0])


def bare_pydicom(files: list[Path], workers: int) -> float:
    """Seconds for ``dcmread(f).pixel_array`` over ``files`` with ``workers`` processes."""
    start = time.perf_counter()
    if workers <= 1:
        for f in files:
            _decode(str(f))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_decode, [str(f) for f in files], chunksize=1))
    return time.perf_counter() - start


def fedrad_scan(folder: Path, params: PreprocessConfig, cache: Path, workers: int) -> float:
    """Seconds for a first ingest of ``folder`` into an empty cache with ``workers`` processes."""
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    scan = scan_site(folder, params, cache_dir=cache, workers=workers)
    elapsed = time.perf_counter() - start
    if len(scan.usable) != len(list(folder.iterdir())):
        raise SystemExit(f"FedRad rejected files in {folder}: {[r.reason for r in scan.rejected]}")
    return elapsed


def measure(args: argparse.Namespace, work: Path) -> list[dict]:
    params = PreprocessConfig(image_size=args.image_size)
    cores = allowed_cores()
    rows = []
    for name, syntax in ENCODINGS.items():
        folder = work / name
        size_bytes = write_fullsize(folder, args.n, args.sizes, syntax, args.bits, args.seed)
        files = sorted(folder.iterdir())
        for workers in sorted({1, cores}):
            bare = min(bare_pydicom(files, workers) for _ in range(args.repeats))
            ours = min(fedrad_scan(folder, params, work / "cache", workers) for _ in range(args.repeats))
            rows.append(
                {
                    "encoding": name,
                    "workers": workers,
                    "files": len(files),
                    "mb_on_disk": round(size_bytes / 1e6, 1),
                    "bare_images_per_s": round(len(files) / bare, 2),
                    "fedrad_images_per_s": round(len(files) / ours, 2),
                    "ratio": round(bare / ours, 3),
                }
            )
        shutil.rmtree(folder)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="files per encoding")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[2500, 3000], help="sides, px"
    )
    parser.add_argument("--bits", type=int, default=12, choices=(12, 16), help="BitsStored")
    parser.add_argument("--image-size", type=int, default=512, help="model input side FedRad preprocesses to")
    parser.add_argument("--repeats", type=int, default=2, help="best of R timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 1 or any(not 512 <= s <= 4096 for s in args.sizes):
        parser.error("--n must be >= 1 and each of --sizes in [512, 4096]")
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="fedrad-bench-ingest-fullsize-"))
    try:
        rows = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"sizes": args.sizes, "bits": args.bits, "image_size": args.image_size, "rows": rows}))
        return 0
    print(
        f"full-size ingest: {args.n} files per encoding, sides {args.sizes} px, {args.bits} bits, "
        f"to {args.image_size} px; best of {args.repeats}; {allowed_cores()} cores allowed"
    )
    print(f"{'encoding':<13}{'workers':>8}{'MB':>8}{'bare img/s':>12}{'FedRad img/s':>14}{'ratio':>8}")
    for r in rows:
        print(
            f"{r['encoding']:<13}{r['workers']:>8}{r['mb_on_disk']:>8}{r['bare_images_per_s']:>12}"
            f"{r['fedrad_images_per_s']:>14}{r['ratio']:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
