"""A test-only third task: regress each image's mean brightness. Proves the task seam.

Defined entirely here and registered as a plug-in (``FEDRAD_TASK_PLUGINS=tests.toy_task``), it trains
federated on Flower's simulation engine and is evaluated at a site without a line changed outside ``tests/``:
the site loads its cases, the one training loop trains, the outbound guard and the server's reply check
let its metric keys through, checkpoints and model files carry it, ``fedrad-site evaluate`` scores it.

Its target needs no label file: the mean intensity of the preprocessed image (a self-supervised toy).
torch is imported inside the methods: the outbound guard loads this module in light processes too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from shared.tasks import Task, register_task

NAME = "toy-brightness"
METRICS = {"mae": "num-examples", "r2": "num-examples"}


@dataclass
class BrightnessDataset:
    task_name: ClassVar[str] = NAME

    images: Any  # (N, 1, S, S) float32
    targets: Any  # (N, 1) float32: each image's mean intensity
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Any) -> BrightnessDataset:
        import torch

        idx = torch.as_tensor(index, dtype=torch.long)
        return BrightnessDataset(self.images[idx], self.targets[idx], [self.groups[i] for i in idx.tolist()])


def _tiny_regressor(num_outputs: int, image_size: int, **kwargs: Any):  # noqa: ANN202
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_outputs)
    )


class BrightnessTask(Task):
    name = NAME
    outputs_key = "labels"
    default_model = "tinyreg"
    headline_metric = "r2"
    label_csv = False
    train_defaults = {"batch_size": 8, "lr": 1e-2}

    def model_registry(self) -> Mapping[str, Callable]:
        return {"tinyreg": _tiny_regressor}

    def load_site(self, cfg, outputs: list[str], source: Path) -> BrightnessDataset:  # noqa: ANN001
        import numpy as np
        import torch

        from shared.imaging.scan import scan_site

        scan = scan_site(Path(cfg.data), cfg.preprocess(), cfg.resolved_cache_dir(), workers=1)
        records = scan.usable
        images = torch.from_numpy(np.stack([scan.load_image(r) for r in records])[:, None].astype(np.float32))
        scan.flush_cache()
        groups = [r.header.patient_id or r.path for r in records]
        return BrightnessDataset(images, images.mean(dim=(1, 2, 3)).unsqueeze(1), groups)

    def split(self, data: BrightnessDataset, fraction: float, seed: int):  # noqa: ANN201
        from shared.splits import stratified_group_split

        train, held = stratified_group_split([0] * len(data), data.groups, fraction, seed)
        return data.subset(train.tolist()), data.subset(held.tolist())

    def targets(self, data: BrightnessDataset):  # noqa: ANN201
        return data.targets

    def loss(self, data: BrightnessDataset, class_weighted: bool) -> Callable:
        import torch.nn.functional as F

        return F.mse_loss

    def _figures(self, model, data: BrightnessDataset) -> dict[str, float]:  # noqa: ANN001
        import torch

        from shared.training import batched_logits

        pred = batched_logits(model, data.images, 64)
        err = pred - data.targets
        var = float(((data.targets - data.targets.mean()) ** 2).mean())
        mse = float((err**2).mean())
        return {
            "loss": mse,
            "mae": float(err.abs().mean()),
            "r2": 1.0 - mse / var if var > 0 else 0.0,
            "n": len(data),
            "finite": bool(torch.isfinite(pred).all()),
        }

    def validation(self, model, data: BrightnessDataset) -> dict[str, Any]:  # noqa: ANN001
        return {"val_loss": self._figures(model, data)["loss"]}

    def site_metrics(self, model, data: BrightnessDataset, seed: int) -> dict[str, float | int]:  # noqa: ANN001
        f = self._figures(model, data)
        return {"num-examples": len(data), "loss": f["loss"], "mae": f["mae"], "r2": f["r2"]}

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        return METRICS.get(key, False)

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        return (0.0, float("inf")) if key == "mae" else super().metric_bounds(key)

    def evaluate_local(self, loaded, model_path: Path, cfg, out_dir: Path, **options: Any) -> dict:  # noqa: ANN001
        data = self.load_site(cfg, loaded.outputs, Path(cfg.data))
        metrics = {"task": NAME, **self._figures(loaded.model, data), "model": str(model_path)}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics


TASK = register_task(BrightnessTask())
