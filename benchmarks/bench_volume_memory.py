"""Peak memory of a site training 3D segmentation from its volume cache, at N and 10·N volumes: flat in N.

``fedrad-bench volume-memory [--sizes 10,100] [--shape 128,128,128] [--patch 64] [--threads 2] [--dir DIR]``

For each N, in a fresh process: writes N synthetic CT-like volumes (uint16 ``--shape``, with a uint8
label map of two segments) straight into a site's volume cache through its own writer
(:meth:`shared.imaging.volume_store.VolumeStore.put`: the arrays a scan of a DICOM export stores, no
DICOM needed), then, in another fresh process, opens them as the task does
(:class:`~shared.tasks.segmentation3d.dataset.VolumeCases` on the store's ``pread``-backed arrays) and
trains one epoch of the ``segmentation3d`` task with :func:`shared.training.train_model`
(``--patches-per-case`` patches of ``--patch``³ from every volume, batch 2, foreground-balanced, so the
epoch reads every volume, and the sampler first scans every label map for its centre candidates).
Printed: each process's peak resident set (``VmHWM``), the resident set before training, and the
ratio of the largest N's training peak to the smallest's (target ≤ 1.10). Each N's cache is deleted
after its run. Needs N · (2 + 1) bytes per voxel of free disk at the largest N (630 MB for 100 × 128³).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory_scaling import GB, TARGET, disk_problem, measure_sizes, peak_ratios
from benchmarks.memory_scaling import vm_kb as _vm

MB = 1 << 20
LABELS = ["organ", "lesion"]


def _key(i: int) -> str:
    return f"synthetic-{i:06d}"


def write_volumes(root: Path, n: int, shape: tuple[int, int, int]) -> dict:
    """N volumes through the store's writer: 8 base volumes (noise, an ellipsoid organ with a lesion in it),
    volume i = base i mod 8 rolled by i voxels along each axis (distinct contents, cheap to make)."""
    import numpy as np

    from shared.imaging.volume_store import VolumeStore

    rng = np.random.default_rng(0)
    grid = np.indices(shape, dtype=np.float32)
    bases = []
    for _ in range(8):
        c = [rng.uniform(0.35, 0.65) * s for s in shape]
        r = [rng.uniform(0.15, 0.25) * s for s in shape]
        organ = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1
        lc = [ci + rng.uniform(-0.4, 0.4) * ri for ci, ri in zip(c, r)]
        lesion = sum((g - ci) ** 2 for g, ci in zip(grid, lc)) <= (0.3 * min(r)) ** 2
        img = 0.15 + 0.05 * rng.standard_normal(shape)
        img[organ] += 0.4
        img[lesion] -= 0.15
        lab = np.zeros(shape, np.uint8)
        lab[organ], lab[lesion & organ] = 1, 2
        bases.append((np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16), lab))
    del grid
    store = VolumeStore(root)
    t0 = time.perf_counter()
    for i in range(n):
        img, lab = bases[i % 8]
        shift = (i % shape[0], (3 * i) % shape[1], (7 * i) % shape[2])
        store.put(_key(i), "image", np.roll(img, shift, axis=(0, 1, 2)), {"spacing": [1.5, 1.5, 1.5]})
        store.put(_key(i), "labels", np.roll(lab, shift, axis=(0, 1, 2)), {"series_key": _key(i)})
    if store.warning:
        raise SystemExit(store.warning)
    seconds = time.perf_counter() - t0
    disk = sum(p.stat().st_blocks * 512 for p in (root / "volumes").glob("*.npy"))
    return {"n": n, "write_s": round(seconds, 1), "disk_gb": round(disk / GB, 2), "write_peak_mb": _vm("VmHWM") // 1024}


def train_epoch(root: Path, n: int, patch: int, ppc: int, model_name: str, threads: int) -> dict:
    """One epoch of train_model over the N stored volumes: RSS before, peak after, and the speed."""
    import torch

    from shared.imaging.volume_store import VolumeStore
    from shared.tasks.segmentation3d import TASK
    from shared.tasks.segmentation3d.dataset import PatchSampling, VolumeCases
    from shared.training import TrainConfig, train_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    store = VolumeStore(root)
    images = [store.get(_key(i), "image") for i in range(n)]
    maps = [store.get(_key(i), "labels") for i in range(n)]
    if any(a is None for a in images + maps):
        raise SystemExit(f"the volume cache at {root} lacks some of the {n} volumes")
    data = VolumeCases.from_arrays(
        images,
        maps,
        [tuple(a.meta["spacing"]) for a in images],
        LABELS,
        intensity_scale=1.0 / 65535,
        sampling=PatchSampling(patch_size=patch, patches_per_case=ppc),
    )
    model = TASK.build_model(model_name, len(LABELS), patch)
    loaded_mb = _vm("VmRSS") // 1024
    t0 = time.perf_counter()
    history = train_model(model, data, TrainConfig.for_task(TASK, epochs=1, batch_size=2, augment=1.0))
    seconds = time.perf_counter() - t0
    return {
        "n": n,
        "patches": n * ppc,
        "train_s": round(seconds, 1),
        "patches_per_s": round(history[0]["images_per_s"], 2),
        "rss_before_training_mb": loaded_mb,
        "train_peak_mb": _vm("VmHWM") // 1024,
    }


def main(argv: list[str] | None = None) -> int | str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100", help="Numbers of volumes, comma-separated (smallest first).")
    ap.add_argument("--shape", default="128,128,128", help="D,H,W of every volume (uint16).")
    ap.add_argument("--patch", type=int, default=64, help="Training patch side (the task's image size).")
    ap.add_argument("--patches-per-case", type=int, default=1, help="Patches drawn from every volume in the epoch.")
    ap.add_argument("--model", default="unet", help="unet, segresnet or dynunet.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (set it: shared machines).")
    ap.add_argument("--dir", type=Path, default=None, help="Where the caches go (default: the temp folder).")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", choices=["write", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 8:
        return f"--shape: three sides of at least 8 voxels, e.g. 128,128,128; got {args.shape!r}"
    if args.phase == "write":
        print(json.dumps(write_volumes(args.root, args.n, shape)))
        return 0
    if args.phase == "train":
        print(json.dumps(train_epoch(args.root, args.n, args.patch, args.patches_per_case, args.model, args.threads)))
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = Path(args.dir or tempfile.gettempdir())
    voxels = shape[0] * shape[1] * shape[2]
    problem = disk_problem(
        base, max(sizes) * voxels * 3, 1, f"{max(sizes):,} volumes of {args.shape}", "smaller --sizes or --shape"
    )
    if problem:
        return problem
    options = ["--shape", args.shape, "--patch", str(args.patch), "--patches-per-case", str(args.patches_per_case)]
    options += ["--model", args.model, "--threads", str(args.threads)]

    def show(row: dict) -> None:
        if not args.json:
            print(
                f"N={row['n']:>5,}  cache {row['disk_gb']:5.2f} GB written in {row['write_s']:5.1f} s "
                f"(writer peak {row['write_peak_mb']} MB)  |  epoch of {row['patches']} patches {row['train_s']:6.1f} s, "
                f"{row['patches_per_s']:5.2f} patches/s, RSS before training {row['rss_before_training_mb']} MB, "
                f"training peak {row['train_peak_mb']} MB",
                flush=True,
            )

    rows = measure_sizes("benchmarks.bench_volume_memory", sizes, base, "fedrad-volume-memory", options, show)
    ratio, writer_ratio = peak_ratios(rows)
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    summary = {
        "rows": rows,
        "shape": list(shape),
        "patch": args.patch,
        "model": args.model,
        "threads": args.threads,
        "train_peak_ratio": round(ratio, 3),
        "write_peak_ratio": round(writer_ratio, 3),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"peak RSS at N={sizes[-1]:,} / N={sizes[0]:,}: training {ratio:.3f}× (target ≤ {TARGET:.2f}×: {verdict}), "
            f"writing {writer_ratio:.3f}×; {args.model}, {args.shape} uint16 volumes, {args.patch}³ patches, batch 2, "
            f"{args.patches_per_case} patch(es) per volume, {args.threads} torch thread(s)"
        )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
