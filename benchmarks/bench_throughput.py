"""Training throughput on the site's hardware: FedRad's ``train_model`` against a bare PyTorch loop.

Same model class and initial weights, batch size, image size, optimizer (AdamW), device, thread
count and precision (on CUDA: the autocast dtype, GradScaler for fp16, channels_last), random
data of the model's input shape, the same number of steps; a warm-up of each loop (allocator,
oneDNN / cuDNN kernel choice) is not timed. The bare loop is what a careful engineer writes by
hand: index a random permutation, copy to the device (pinned, non-blocking), forward, loss,
backward, step. ``train_model`` runs as a site runs it: augmentation (``--augment``, FedRad's
default 1), class-weighted loss, its per-epoch statistics and BatchNorm re-estimate, the model
placed on the device and back. A third arm, ``packed``, trains on the same images written
to the site cache's uint16 shards and read back through the DataLoader (``shared.batches``), as a
real site's training reads them. Runs alternate; reported are the best of ``--repeats`` by wall
clock, and the median of the ratios of neighbouring runs. Target: >= 0.9 on CPU, >= 0.95 on a
GPU (issue 22); exit 1 below the target for the device.

    fedrad-bench throughput --model densenet121 --image-size 224 --batch-size 16 --steps 8 --device auto --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import hardware as hwmod  # noqa: E402
from shared.config import ConfigError  # noqa: E402
from shared.models import MODEL_BUILDERS, build_model  # noqa: E402
from shared.tasks.classification.dataset import SiteDataset  # noqa: E402
from shared.training import TrainConfig, train_model  # noqa: E402

CLASSES = ["normal", "nodule"]
TARGET = {"cpu": 0.9, "cuda": 0.95}


def bare_loop(model: torch.nn.Module, data: SiteDataset, batch_size: int, hw: hwmod.Hardware) -> int:
    """The reference loop on ``hw`` (same precision and memory format as FedRad's). Returns images trained."""
    dev = hw.torch_device
    model.to(dev)
    channels_last = hw.is_cuda and hwmod.is_2d_convnet(model, 4)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = TrainConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if hw.needs_grad_scaler else None
    g = torch.Generator().manual_seed(0)
    n = len(data)
    perm = torch.randperm(n, generator=g)
    model.train()
    seen = 0
    for s in range(0, n, batch_size):
        idx = perm[s : s + batch_size]
        x, y = data.images[idx], data.labels[idx]
        if hw.is_cuda:
            x = x.pin_memory().to(dev, non_blocking=True)
            y = y.pin_memory().to(dev, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with hwmod.autocast(hw):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        seen += len(idx)
    hwmod.synchronize(hw)
    return seen


def fedrad_loop(model: torch.nn.Module, data: SiteDataset, batch_size: int, hw: hwmod.Hardware, augment: float) -> int:
    """``train_model`` for one epoch of ``data`` on ``hw``. Returns images trained."""
    train_model(model, data, TrainConfig(epochs=1, batch_size=batch_size, augment=augment), hardware=hw)
    return len(data) - (len(data) % batch_size == 1)


def packed_site(data: SiteDataset, root: Path) -> SiteDataset:
    """``data``'s images written to a cache's shards under ``root`` and addressed from there (the site's path)."""
    import hashlib

    from shared.config import PreprocessConfig
    from shared.imaging.cache import IngestCache
    from shared.packed import from_cache

    size = int(data.images.shape[-1])
    cache = IngestCache(root, PreprocessConfig(image_size=size))
    shas = [hashlib.sha256(f"throughput-{i}".encode()).hexdigest() for i in range(len(data))]
    for sha, image in zip(shas, data.images[:, 0].numpy(), strict=True):
        cache.put_tensor(sha, image)
    cache.flush()
    images = from_cache(cache, shas, (size, size))
    return SiteDataset(images=images, labels=data.labels, classes=list(data.classes))


def random_site(steps: int, batch_size: int, size: int, seed: int = 0) -> SiteDataset:
    """``steps`` batches of random (1, size, size) images in [0, 1] with random labels, both classes present."""
    g = torch.Generator().manual_seed(seed)
    n = steps * batch_size
    labels = torch.randint(0, 2, (n,), generator=g)
    labels[:2] = torch.tensor([0, 1])
    return SiteDataset(images=torch.rand(n, 1, size, size, generator=g), labels=labels, classes=list(CLASSES))


def timed(fn, *args) -> tuple[float, int]:  # noqa: ANN001 - a loop above
    """(wall seconds, images) of ``fn(*args)``."""
    t0 = time.perf_counter()
    images = fn(*args)
    return time.perf_counter() - t0, images


def measure(args: argparse.Namespace, hw: hwmod.Hardware) -> dict:
    torch.manual_seed(0)
    init = build_model(args.model, len(CLASSES), args.image_size)
    data = random_site(args.steps, args.batch_size, args.image_size)
    warm = random_site(args.warmup, args.batch_size, args.image_size, seed=1)
    bare_loop(copy.deepcopy(init), warm, args.batch_size, hw)  # warm-up: not timed
    fedrad_loop(copy.deepcopy(init), warm, args.batch_size, hw, args.augment)
    runs: dict[str, list[float]] = {"bare": [], "fedrad": [], "packed": []}
    with tempfile.TemporaryDirectory(prefix="fedrad-throughput-") as tmp:
        packed = packed_site(data, Path(tmp))
        fedrad_loop(copy.deepcopy(init), packed_site(warm, Path(tmp) / "warm"), args.batch_size, hw, args.augment)
        for _ in range(args.repeats):
            for name in ("fedrad", "packed", "bare"):
                model = copy.deepcopy(init)
                if name == "bare":
                    seconds, images = timed(bare_loop, model, data, args.batch_size, hw)
                else:
                    source = packed if name == "packed" else data
                    seconds, images = timed(fedrad_loop, model, source, args.batch_size, hw, args.augment)
                runs[name].append(images / seconds)
    best = {k: max(v) for k, v in runs.items()}
    return {
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "augment": args.augment,
        "hardware": hw.to_json(),
        "bare_images_per_s": round(best["bare"], 2),
        "fedrad_images_per_s": round(best["fedrad"], 2),
        "ratio_best": round(best["fedrad"] / best["bare"], 3),
        "packed_images_per_s": round(best["packed"], 2),
        "ratio_median_pairs": round(statistics.median(f / b for f, b in zip(runs["fedrad"], runs["bare"])), 3),
        "packed_ratio_best": round(best["packed"] / best["bare"], 3),
        "packed_ratio_median_pairs": round(statistics.median(f / b for f, b in zip(runs["packed"], runs["bare"])), 3),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "target": TARGET["cuda" if hw.is_cuda else "cpu"],
    }


def main(argv: list[str] | None = None) -> int | str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet121", help=f"one of {', '.join(sorted(MODEL_BUILDERS))}")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each loop first")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each loop, alternating")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as site.yaml's device)")
    ap.add_argument("--threads", default="auto", help="torch CPU threads: auto (every core) or N")
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too (site.yaml amp: false)")
    ap.add_argument("--augment", type=float, default=1.0, help="FedRad's augmentation strength (0 = off)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args(argv)
    if args.steps < 2 or args.warmup < 2 or args.batch_size < 2 or args.repeats < 1:
        return "--steps and --warmup must be >= 2, --batch-size >= 2, --repeats >= 1"
    if args.model not in MODEL_BUILDERS:
        return f"--model {args.model!r}: use one of {', '.join(sorted(MODEL_BUILDERS))}"
    try:
        threads = args.threads if args.threads == "auto" else int(args.threads)
        hw = hwmod.activate(hwmod.resolve_hardware(args.device, threads, not args.no_amp, where="--device"))
    except (ConfigError, ValueError) as exc:
        return str(exc)
    result = measure(args, hw)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['model']} at {result['image_size']} px, batch {result['batch_size']}, {result['steps']} steps, "
            f"FedRad augment {result['augment']:g}, on {hw.describe()}"
        )
        print(f"bare PyTorch loop : {result['bare_images_per_s']:9.2f} images/s  (runs {result['runs']['bare']})")
        print(f"FedRad train_model: {result['fedrad_images_per_s']:9.2f} images/s  (runs {result['runs']['fedrad']})")
        print(f"FedRad from packs : {result['packed_images_per_s']:9.2f} images/s  (runs {result['runs']['packed']})")
        print(
            f"packs / bare      : {result['packed_ratio_best']:9.3f} best, {result['packed_ratio_median_pairs']:.3f} "
            "median of neighbouring pairs"
        )
        print(
            f"ratio             : {result['ratio_best']:9.3f} best, {result['ratio_median_pairs']:.3f} median of "
            f"neighbouring pairs (target >= {result['target']})"
        )
    worst = min(result["ratio_median_pairs"], result["packed_ratio_median_pairs"])
    return 0 if worst >= result["target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
