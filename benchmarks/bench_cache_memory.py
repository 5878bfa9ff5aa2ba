"""Peak memory of a site training from the image cache, at N and 10·N images: it must not grow with N.

``fedrad-bench cache-memory [--sizes 10000,100000] [--image-size 256] [--dir DIR]``
writes N synthetic images straight into the cache's shards through the
cache's own writer (:meth:`shared.imaging.cache.IngestCache.put_tensor`: no
DICOM decoding, which would only make the run slower), then trains one epoch
with :func:`shared.training.train_model` (batch 32) reading through its
DataLoader, each step in a fresh process, and prints each process's peak
resident set (``VmHWM``) and the ratio of the largest N's training peak to the
smallest's (target: ≤ 1.10). The default model is a tiny CNN (the figure is
memory, not speed; it still reads every pixel of every image); ``--model
smallcnn`` or any classification architecture works too. Each N's pack is
deleted after its run. Needs N · S² · 2 bytes of free disk at the largest N
(13 GB for 100k at 256 px): the script checks first and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory_scaling import GB, TARGET, disk_problem, measure_sizes, peak_ratios
from benchmarks.memory_scaling import vm_kb as _vm


def _sha(i: int) -> str:
    return hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()


def write_pack(root: Path, n: int, size: int) -> dict:
    """N patterned uint16 images through the cache writer (64 bases, each image xor-ed with its number)."""
    import numpy as np

    from shared.config import PreprocessConfig
    from shared.imaging.cache import IngestCache

    rng = np.random.default_rng(0)
    bases = rng.integers(0, 65536, size=(64, size, size), dtype=np.uint16)
    cache = IngestCache(root, PreprocessConfig(image_size=size))
    t0 = time.perf_counter()
    for i in range(n):
        cache.put_tensor(_sha(i), np.bitwise_xor(bases[i % 64], np.uint16(i & 0xFFFF)))
    cache.flush()
    if cache.warning:
        raise SystemExit(cache.warning)
    seconds = time.perf_counter() - t0
    disk = sum(p.stat().st_blocks * 512 for p in (root / "packs").rglob("*.npy"))
    return {"n": n, "write_s": round(seconds, 1), "disk_gb": round(disk / GB, 2), "write_peak_mb": _vm("VmHWM") // 1024}


def tiny_cnn(size: int):  # noqa: ANN201 - nn.Module
    """A CNN that reads every pixel and costs little: the benchmark measures memory, not arithmetic."""
    from torch import nn

    return nn.Sequential(
        nn.AvgPool2d(8),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def train_epoch(root: Path, n: int, size: int, model_name: str, workers: int, augment: float) -> dict:
    """One epoch of train_model over the pack at ``root``: peak RSS before and after, and the speed."""
    import resource

    import torch

    from shared.config import PreprocessConfig
    from shared.imaging.cache import IngestCache
    from shared.models import build_model
    from shared.packed import from_cache
    from shared.tasks.classification.dataset import SiteDataset
    from shared.training import TrainConfig, train_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cache = IngestCache(root, PreprocessConfig(image_size=size))
    images = from_cache(cache, [_sha(i) for i in range(n)], (size, size), workers=workers)
    labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0))
    data = SiteDataset(images=images, labels=labels, classes=["normal", "nodule"])
    model = tiny_cnn(size) if model_name == "tiny" else build_model(model_name, 2, size)
    loaded_mb = _vm("VmRSS") // 1024
    t0 = time.perf_counter()
    history = train_model(model, data, TrainConfig(epochs=1, batch_size=32, augment=augment))
    seconds = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024  # loader workers, after they exit
    return {
        "n": n,
        "train_s": round(seconds, 1),
        "images_per_s": round(history[0]["images_per_s"], 1),
        "rss_before_training_mb": loaded_mb,
        "train_peak_mb": _vm("VmHWM") // 1024,
        "worker_peak_mb": children if workers else 0,
    }


def main(argv: list[str] | None = None) -> int | str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="Numbers of images, comma-separated (smallest first).")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--model", default="tiny", help="tiny, or a classification architecture (smallcnn, ...).")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (data_workers).")
    ap.add_argument("--augment", type=float, default=0.0, help="Augmentation strength (0: off, the default here).")
    ap.add_argument("--dir", type=Path, default=None, help="Where the packs go (default: the temp folder).")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", choices=["write", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "write":
        print(json.dumps(write_pack(args.root, args.n, args.image_size)))
        return 0
    if args.phase == "train":
        print(json.dumps(train_epoch(args.root, args.n, args.image_size, args.model, args.workers, args.augment)))
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = Path(args.dir or tempfile.gettempdir())
    problem = disk_problem(
        base,
        max(sizes) * args.image_size**2 * 2,
        2,
        f"{max(sizes):,} images at {args.image_size} px",
        "a smaller --sizes or --image-size",
    )
    if problem:
        return problem
    options = ["--image-size", str(args.image_size), "--model", args.model, "--workers", str(args.workers)]
    options += ["--augment", str(args.augment)]

    def show(row: dict) -> None:
        if not args.json:
            print(
                f"N={row['n']:>7,}  pack {row['disk_gb']:6.2f} GB written in {row['write_s']:6.1f} s "
                f"(writer peak {row['write_peak_mb']} MB)  |  epoch {row['train_s']:6.1f} s, "
                f"{row['images_per_s']:7.1f} img/s, RSS before training {row['rss_before_training_mb']} MB, "
                f"training peak {row['train_peak_mb']} MB"
                + (f", workers' peak {row['worker_peak_mb']} MB" if args.workers else ""),
                flush=True,
            )

    rows = measure_sizes("benchmarks.bench_cache_memory", sizes, base, "fedrad-cache-memory", options, show)
    ratio, writer_ratio = peak_ratios(rows)
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    summary = {"rows": rows, "train_peak_ratio": round(ratio, 3), "write_peak_ratio": round(writer_ratio, 3)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"peak RSS at N={sizes[-1]:,} / N={sizes[0]:,}: training {ratio:.3f}× (target ≤ {TARGET:.2f}×: {verdict}), "
            f"writing {writer_ratio:.3f}×; model {args.model}, {args.image_size} px, batch 32, "
            f"{args.workers} loader workers"
        )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
