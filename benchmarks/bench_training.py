"""Training throughput of ``shared.training.train_model`` against a bare PyTorch loop.

Both use the same model class and initial weights, batch size, optimizer
(AdamW) and random-permutation batch indexing, in the same process on one
thread. ``train_model`` runs with its defaults (augmentation strength 1,
class-weighted loss, per-epoch statistics). Runs alternate; reported are the
best of several repeats by wall clock and by process CPU time (CPU time is
barely disturbed by other programs on a busy machine), and the median of the
ratios of neighbouring runs. Target: ratio >= 0.9.

Also reports what the augmentation costs per image, batched (what FedRad
uses) versus the per-sample MONAI ``Compose`` it replaces.

    .venv/bin/python benchmarks/bench_training.py [--images 512] [--size 64] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.augment import build_augment  # noqa: E402
from shared.models import build_model  # noqa: E402
from shared.tasks.classification.dataset import SiteDataset  # noqa: E402
from shared.training import TrainConfig, train_model  # noqa: E402


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn(*args)``."""
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w, time.process_time() - c


def bare_loop(model, images, labels, epochs: int, batch_size: int, lr: float, wd: float) -> int:
    """The reference: the plainest correct PyTorch training loop. Returns images trained."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    n = images.shape[0]
    model.train()
    seen = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            x, y = images[idx], labels[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen


def fedrad_loop(model, data: SiteDataset, cfg: TrainConfig) -> int:
    """``train_model`` with its defaults. Returns images trained."""
    hist = train_model(model, data, cfg)
    return sum(len(data) - (len(data) % cfg.batch_size == 1) for _ in hist)


def augment_cost(images: torch.Tensor, batch_size: int) -> tuple[float, float | None]:
    """Seconds per image: batched BatchAugment vs per-sample MONAI Compose (None if MONAI is missing)."""
    aug = build_augment(1.0)
    g = torch.Generator().manual_seed(0)
    batches = [images[s : s + batch_size] for s in range(0, images.shape[0], batch_size)]
    aug(batches[0], g)
    t0 = time.perf_counter()
    for b in batches:
        aug(b, g)
    batched = (time.perf_counter() - t0) / images.shape[0]
    try:
        import monai.transforms as mt
    except ImportError:
        return batched, None
    per_sample = mt.Compose(
        [
            mt.RandFlip(prob=0.5, spatial_axis=1),
            mt.RandRotate(range_x=0.1745, prob=1.0, padding_mode="border"),
            mt.RandScaleIntensity(factors=0.1, prob=1.0),
            mt.RandShiftIntensity(offsets=0.1, prob=1.0),
            mt.RandGaussianNoise(prob=1.0, std=0.03),
        ]
    ).set_random_state(seed=0)
    per_sample(images[0])
    t0 = time.perf_counter()
    for b in batches:
        torch.stack([torch.as_tensor(per_sample(img)) for img in b])
    return batched, (time.perf_counter() - t0) / images.shape[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smallcnn")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    images = torch.rand(args.images, 1, args.size, args.size)
    labels = torch.randint(0, 2, (args.images,))
    data = SiteDataset(images=images, labels=labels, classes=["normal", "nodule"])
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    init = build_model(args.model, 2, args.size)

    # Warm-up (allocator, oneDNN kernel selection) for both paths.
    bare_loop(copy.deepcopy(init), images, labels, 1, args.batch_size, cfg.lr, cfg.weight_decay)
    fedrad_loop(copy.deepcopy(init), data, TrainConfig(epochs=1, batch_size=args.batch_size))

    n_img = args.images * args.epochs
    bare, ours = [], []  # (wall s, cpu s) per run
    for _ in range(args.repeats):
        bare.append(
            timed(
                bare_loop, copy.deepcopy(init), images, labels, args.epochs, args.batch_size, cfg.lr, cfg.weight_decay
            )
        )
        ours.append(timed(fedrad_loop, copy.deepcopy(init), data, cfg))
    b_wall, o_wall = n_img / min(t[0] for t in bare), n_img / min(t[0] for t in ours)
    b_cpu, o_cpu = n_img / min(t[1] for t in bare), n_img / min(t[1] for t in ours)
    paired = statistics.median(b[0] / o[0] for b, o in zip(bare, ours))
    print(
        f"model={args.model} images={args.images} size={args.size} batch={args.batch_size} "
        f"epochs={args.epochs} repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    runs = lambda ts: ", ".join(f"{n_img / t[0]:.0f}" for t in ts)  # noqa: E731
    print(f"bare loop        : {b_wall:8.1f} images/s wall, {b_cpu:8.1f} images/CPU-s  (wall runs: {runs(bare)})")
    print(f"train_model      : {o_wall:8.1f} images/s wall, {o_cpu:8.1f} images/CPU-s  (wall runs: {runs(ours)})")
    ratio = o_cpu / b_cpu
    print(
        f"ratio            : {o_wall / b_wall:8.3f} wall (best), {ratio:.3f} CPU (best), "
        f"{paired:.3f} wall (median of neighbouring pairs)  (target >= 0.9)"
    )

    batched, per_sample = augment_cost(images, args.batch_size)
    step = 1.0 / b_cpu
    print(f"augment batched  : {batched * 1e6:8.1f} us/image ({batched / step:.1%} of a bare training step)")
    if per_sample is not None:
        print(
            f"augment per-sample MONAI Compose: {per_sample * 1e6:8.1f} us/image "
            f"({per_sample / step:.1%} of a bare training step)"
        )
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
