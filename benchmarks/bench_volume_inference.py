"""Sliding-window volume inference: FedRad's path against bare MONAI on the same volumes, network and threads.

``fedrad-bench volume-inference [--volumes 4] [--shape 96,128,128] [--patch 64] [--model unet] [--threads 2]``

Writes ``--volumes`` synthetic CT-like volumes (uint16, a bright sphere and a cube on noise) into a
site's volume cache through its own writer (:class:`shared.imaging.volume_store.VolumeStore`), then
predicts every volume's logits two ways, in the same process, alternating, ``--repeats`` times each:

* **FedRad**: :func:`shared.tasks.segmentation3d.inference.iter_case_logits` over the cases as the task
  holds them (:class:`~shared.tasks.segmentation3d.dataset.VolumeCases` on the cache's stored arrays: each
  volume read with ``pread``, scaled to float32, predicted, its pages released), what evaluation and the
  benchmark's scores run;
* **bare MONAI**: the plainest correct loop a MONAI user writes: ``np.load`` of the same ``.npy`` file,
  ``× scale`` to float32, ``monai.inferers.sliding_window_inference`` under ``torch.no_grad()`` with the
  same network (same weights, eval mode), window (patch), overlap (0.25), blending (``gaussian``) and
  windows per batch (``sw_batch_size``: the number FedRad uses, ``inference_batch_size``).

Both run with the same ``torch.set_num_threads(--threads)`` on the CPU (``--device cuda`` runs both on the
GPU; FedRad then adds its mixed precision, so the outputs differ within bf16 rounding). Reported: voxels/s
and volumes/s of the best run of each by wall clock, the ratio FedRad / bare (target ≥ 0.9), the median
of the ratios of neighbouring runs and the ratio by process CPU time (both robust to a busy machine), and
the largest difference between the two logit volumes (0 on the CPU: the same computation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.9
SCALE = 1.0 / 65535.0


def write_volumes(root: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> list[str]:
    """``n`` uint16 volumes (and uint8 label maps) of ``shape`` in the volume store at ``root``; their keys."""
    import numpy as np

    from shared.imaging.volume_store import VolumeStore

    store = VolumeStore(root)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    keys = []
    for i in range(n):
        img = 0.2 + 0.05 * rng.standard_normal(shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        r = min(shape) / 6
        c = [rng.uniform(r + 1, s - r - 1) for s in shape]
        sphere = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        o = [int(rng.integers(0, s - s // 4)) for s in shape]
        cube = np.zeros(shape, bool)
        cube[o[0] : o[0] + shape[0] // 5, o[1] : o[1] + shape[1] // 5, o[2] : o[2] + shape[2] // 5] = True
        cube &= ~sphere
        img[sphere] += 0.5
        img[cube] += 0.3
        lab[sphere], lab[cube] = 1, 2
        key = f"bench-{i:05d}"
        store.put(key, "image", np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16), {"spacing": [1.0] * 3})
        store.put(key, "labels", lab, {"series_key": key})
        keys.append(key)
    if store.warning:
        raise SystemExit(store.warning)
    return keys


def load_cases(root: Path, keys: list[str], patch: int):  # noqa: ANN201 - VolumeCases
    """The stored volumes as the task's cases (read through ``pread``, as a site's scan gives them)."""
    from shared.imaging.volume_store import VolumeStore
    from shared.tasks.segmentation3d.dataset import PatchSampling, VolumeCases

    store = VolumeStore(root)
    images = [store.get(k, "image") for k in keys]
    maps = [store.get(k, "labels") for k in keys]
    return VolumeCases.from_arrays(
        images,
        maps,
        [(1.0, 1.0, 1.0)] * len(keys),
        ["sphere", "cube"],
        intensity_scale=SCALE,
        sampling=PatchSampling(patch_size=patch),
    )


def fedrad_pass(model, data) -> tuple[int, list]:  # noqa: ANN001
    """FedRad's evaluation path over every case: voxels predicted, and the logits of the first case."""
    from shared.tasks.segmentation3d.inference import iter_case_logits

    voxels, first = 0, None
    for i, logits in iter_case_logits(model, data):
        voxels += logits[0].numel()
        if i == 0:
            first = logits
    return voxels, first


def bare_pass(model, files: list[Path], patch: int, sw_batch: int, device: str) -> tuple[int, list]:  # noqa: ANN001
    """The reference: np.load, scale, MONAI's sliding window (same settings), logits to the CPU."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from shared.tasks.segmentation3d.inference import OVERLAP

    voxels, first = 0, None
    model.eval()
    with torch.no_grad():
        for i, f in enumerate(files):
            x = torch.from_numpy(np.load(f).astype(np.float32) * np.float32(SCALE))[None, None]
            out = sliding_window_inference(
                x.to(device), (patch,) * 3, sw_batch, model, overlap=OVERLAP, mode="gaussian"
            )
            logits = out[0].float().cpu()
            voxels += logits[0].numel()
            if i == 0:
                first = logits
    return voxels, first


def run(args: argparse.Namespace, root: Path) -> dict:
    import torch

    from shared import hardware as hwmod
    from shared.imaging.volume_store import VolumeStore
    from shared.tasks.segmentation3d.inference import WINDOWS_PER_BATCH
    from shared.tasks.segmentation3d.models import build_seg3d_model
    from shared.training import inference_batch_size

    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    t0 = time.perf_counter()
    keys = write_volumes(root, args.volumes, shape)
    write_s = time.perf_counter() - t0
    data = load_cases(root, keys, args.patch)
    store = VolumeStore(root)
    files = [store.get(k, "image").path for k in keys]
    torch.manual_seed(0)
    model = build_seg3d_model(args.model, 2, args.patch).eval()
    sw_batch = inference_batch_size(WINDOWS_PER_BATCH, (args.patch,) * 3)
    hw = hwmod.resolve_hardware(args.device, args.threads, where="--device")
    if args.device != "cpu":
        model.to(hw.torch_device)

    def fedrad() -> tuple[int, object]:
        with hwmod.using(hw):
            return fedrad_pass(model, data)

    def bare() -> tuple[int, object]:
        return bare_pass(model, files, args.patch, sw_batch, str(hw.torch_device))

    fedrad(), bare()  # warm-up: MONAI's import and first-call costs, the page cache
    times: dict[str, list[float]] = {"fedrad": [], "bare": []}
    cpu: dict[str, list[float]] = {"fedrad": [], "bare": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("fedrad", fedrad), ("bare", bare)):
            hwmod.synchronize(hw)
            t, c = time.perf_counter(), time.process_time()
            voxels, outputs[name] = fn()
            hwmod.synchronize(hw)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    diff = float((outputs["fedrad"] - outputs["bare"]).abs().max())
    best = {k: min(v) for k, v in times.items()}
    ratios = [b / f for f, b in zip(times["fedrad"], times["bare"], strict=True)]
    return {
        "volumes": args.volumes,
        "shape": list(shape),
        "patch": args.patch,
        "model": args.model,
        "threads": args.threads,
        "device": hw.describe(),
        "sw_batch_size": sw_batch,
        "overlap": 0.25,
        "mode": "gaussian",
        "repeats": args.repeats,
        "write_s": round(write_s, 1),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "fedrad_voxels_per_s": round(voxels / best["fedrad"]),
        "bare_voxels_per_s": round(voxels / best["bare"]),
        "fedrad_volumes_per_s": round(args.volumes / best["fedrad"], 3),
        "bare_volumes_per_s": round(args.volumes / best["bare"], 3),
        "ratio": round(best["bare"] / best["fedrad"], 3),
        "median_pair_ratio": round(statistics.median(ratios), 3),
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "cpu_ratio": round(min(cpu["bare"]) / min(cpu["fedrad"]), 3),
        "max_abs_logit_diff": diff,
    }


def main(argv: list[str] | None = None) -> int | str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--shape", default="96,128,128", help="D,H,W of every volume.")
    ap.add_argument("--patch", type=int, default=64, help="Window (= training patch) side.")
    ap.add_argument("--model", default="unet", help="unet, segresnet or dynunet.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both (set it: shared machines).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dir", type=Path, default=None, help="Where the volume cache goes (default: temp folder).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.volumes < 1 or args.repeats < 1 or args.threads < 1:
        return "--volumes, --repeats and --threads must be at least 1"
    root = Path(tempfile.mkdtemp(prefix="fedrad-volume-inference-", dir=args.dir))
    try:
        r = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    verdict = "ok" if r["ratio"] >= TARGET else "BELOW TARGET"
    r["target"], r["meets_target"] = TARGET, r["ratio"] >= TARGET
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['volumes']} volumes {'x'.join(map(str, r['shape']))}, {r['model']} {r['patch']}³ windows, overlap "
        f"{r['overlap']}, {r['mode']}, {r['sw_batch_size']} windows a batch, {r['device']}"
    )
    for name, label in (("fedrad", "FedRad iter_case_logits"), ("bare", "bare MONAI sliding_window")):
        print(
            f"  {label:27s} {r[f'{name}_voxels_per_s']:>12,} voxels/s  {r[f'{name}_volumes_per_s']:7.3f} volumes/s  "
            f"(runs {', '.join(f'{s:.2f}' for s in r['seconds'][name])} s)"
        )
    print(
        f"ratio FedRad / bare {r['ratio']:.3f}× (target ≥ {TARGET}: {verdict}); median of neighbouring runs "
        f"{r['median_pair_ratio']:.3f}×; by process CPU time {r['cpu_ratio']:.3f}×; max |logit difference| "
        f"{r['max_abs_logit_diff']:.2e}"
    )
    return 0 if r["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
