"""A site's usable, labelled images with their labels, ready to train or evaluate.

A real site's ``images`` are :class:`shared.packed.PackedImages`, addresses of
rows in the on-disk cache's shards read batch by batch, so memory does not
grow with the site; tests and synthetic data may pass an in-memory tensor
instead, and both work everywhere (:func:`shared.packed.take`,
:func:`shared.packed.cat`). Nothing here leaves the site: keys, paths and
patient groups are for local splits and local reports only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from shared.packed import PackedImages, cat, take


@dataclass
class SiteDataset:
    """Preprocessed images with their labels and the site-local bookkeeping needed for splits."""

    task_name: ClassVar[str] = "classification"

    images: torch.Tensor | PackedImages  # (N, 1, S, S) float32, intensities windowed to [0, 1]
    labels: torch.Tensor  # (N,) int64, index into ``classes``
    classes: list[str]
    groups: list[str] = field(default_factory=list)  # patient grouping key per case (site-local)
    keys: list[str] = field(default_factory=list)  # label-manifest key per case (site-local)
    paths: list[str] = field(default_factory=list)  # path relative to the data folder (site-local)
    manufacturers: dict[str, int] = field(default_factory=dict)  # usable images per scanner manufacturer

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: list[int] | torch.Tensor) -> SiteDataset:
        """The cases at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        return SiteDataset(
            images=take(self.images, idx),
            labels=self.labels[idx],
            classes=list(self.classes),
            groups=[self.groups[i] for i in pick] if self.groups else [],
            keys=[self.keys[i] for i in pick] if self.keys else [],
            paths=[self.paths[i] for i in pick] if self.paths else [],
        )

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return {c: int(n) for c, n in zip(self.classes, counts)}


def concat_datasets(parts: list[SiteDataset]) -> SiteDataset:
    """Pool several sites' datasets (same classes); patient groups are prefixed so sites never collide."""
    if not parts:
        raise ValueError("nothing to concatenate")
    classes = parts[0].classes
    if any(p.classes != classes for p in parts):
        raise ValueError("datasets have different class lists")
    return SiteDataset(
        images=cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        classes=list(classes),
        groups=[f"{i}:{g}" for i, p in enumerate(parts) for g in p.groups],
        keys=[k for p in parts for k in p.keys],
        paths=[f"{i}:{q}" for i, p in enumerate(parts) for q in p.paths],
    )
