"""The clinical backbones at clinical sizes: size on the wire, training and inference speed, weight import time.

For each of ``densenet121``, ``resnet50``, ``efficientnet_b0`` (one input channel, two outputs): parameters
and float32 megabytes (what a round sends each way), images per second of a training step (forward, backward,
AdamW) and of inference at ``--size`` px, and the seconds :mod:`shared.weights_import` takes to map a
torchvision ImageNet-layout state dict onto it (random values in torchvision's exact layout, recorded in
``tests/data/torchvision_layouts.json``). On CPU it uses ``--threads`` threads; ``--device cuda`` measures the
same on a GPU with bf16 autocast and channels_last (where a site trains in production).

    .venv/bin/python benchmarks/bench_backbones.py [--size 224] [--batch 8] [--steps 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.models import CLINICAL_BACKBONES, build_model  # noqa: E402
from shared.weights_import import import_weights_file  # noqa: E402

LAYOUTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "torchvision_layouts.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step, images: int, steps: int, device: torch.device) -> float:  # noqa: ANN001 - step()
    """Images per second over ``steps`` calls of ``step`` after one warm-up call."""
    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return images * steps / (time.perf_counter() - t)


def torchvision_file(name: str, folder: Path) -> Path:
    """A torchvision-layout ImageNet state dict of ``name`` (3 channels, 1000 classes, random values)."""
    layout = json.loads(LAYOUTS.read_text())["layouts"][name]
    state = {k: torch.zeros(()) if k.endswith("num_batches_tracked") else torch.randn(s) for k, s in layout}
    path = folder / f"{name}-imagenet.pt"
    torch.save(state, path)
    return path


def measure(name: str, size: int, batch: int, steps: int, device: torch.device, folder: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(name, 2, size)
    params = sum(p.numel() for p in model.parameters())
    state_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    source = torchvision_file(name, folder)
    t = time.perf_counter()
    report = import_weights_file(model, source, architecture=name)
    import_s = time.perf_counter() - t

    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.no_grad(), amp:
            model(x)

    model.train()
    train = _rate(train_step, batch, steps, device)
    model.eval()
    infer = _rate(infer_step, batch, steps, device)
    return {
        "model": name,
        "params_m": round(params / 1e6, 2),
        "state_mb": round(state_mb, 1),
        "train_img_s": round(train, 2),
        "infer_img_s": round(infer, 2),
        "import_s": round(import_s, 2),
        "placed": f"{report.placed}/{report.tensors}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--models", default=",".join(CLINICAL_BACKBONES))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device (install the CUDA build; see README)")
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"backbones at {args.size} px, batch {args.batch}, {args.steps} timed steps, on {where}")
    print(f"{'model':<16}{'params':>9}{'MB f32':>9}{'train img/s':>13}{'infer img/s':>13}{'import s':>10}  placed")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = measure(name.strip(), args.size, args.batch, args.steps, device, Path(tmp))
            rows.append(r)
            print(
                f"{r['model']:<16}{r['params_m']:>8}M{r['state_mb']:>9}{r['train_img_s']:>13}{r['infer_img_s']:>13}"
                f"{r['import_s']:>10}  {r['placed']}",
                flush=True,
            )
    print(json.dumps({"size": args.size, "batch": args.batch, "device": where, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
