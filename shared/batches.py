"""How the training loop and the evaluation fetch batches of images, in the order they choose.

An in-memory tensor (tests, synthetic data, a small site) is indexed directly,
as it always was: no worker processes, no per-sample Python. Packed images
(:class:`shared.packed.PackedImages`, the cache's shards) go through a torch
``DataLoader`` whose batch sampler replays the caller's order: the loop draws
its seeded permutation, the loader reads those rows (in worker processes when
there are any, each reading whole batches with ``pread``) and hands them back
in that order. The pixels, the order and therefore the trained weights are the
same as from a tensor, whatever the number of workers.

Workers: ``data_workers`` in site.yaml (:class:`shared.config.SiteDataConfig`),
else none on a CPU (reading a batch costs far less than training on it; a
worker would only take a core from the model) and up to 4 when CUDA is there
to be fed. They persist across the epochs of one :func:`shared.training.train_model`
call. Pinned memory when CUDA is available, so copies to the GPU can overlap.

What the loop trains on each step is a task's choice (:meth:`shared.tasks.Task.train_batches`):
a :class:`TrainBatches`. Every 2D task takes the default, :class:`ImageBatches` (whole images in a
seeded permutation, as above); a task whose cases are too large to be a batch (3D volumes) draws
patches instead, from the same generator, so the loop stays one loop.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from shared.packed import PackedImages

GPU_WORKERS = 4  # loader processes per site by default when a GPU is to be fed


def default_workers(images: torch.Tensor | PackedImages) -> int:
    """Loader processes for ``images``: its own setting, else 0 on CPU and up to :data:`GPU_WORKERS` with CUDA."""
    if not isinstance(images, PackedImages):
        return 0
    if images.workers is not None:
        return images.workers
    return min(GPU_WORKERS, max(0, (os.cpu_count() or 1) - 1)) if torch.cuda.is_available() else 0


class _Rows(Dataset):
    """The images as a map-style dataset that reads a whole batch at once (``__getitems__``)."""

    def __init__(self, images: PackedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    def __getitems__(self, idx: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.images.read(np.asarray(idx, dtype=np.int64)))


class _Order(Sampler):
    """The batches of the current pass, set by the reader before each one (the loop owns the RNG)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch


class BatchReader:
    """Batches of ``images`` in a given order; create one per training run (its workers live as long as it)."""

    def __init__(
        self, images: torch.Tensor | PackedImages, workers: int | None = None, pin_memory: bool | None = None
    ) -> None:
        self.images = images
        self.workers = default_workers(images) if workers is None else int(workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._order = _Order()
        self._loader: DataLoader | None = None

    def __call__(
        self, order: torch.Tensor, starts: Sequence[int], batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(index, images) per batch ``order[s : s + batch_size]`` for each ``s`` in ``starts``."""
        batches = [order[s : s + batch_size] for s in starts]
        if isinstance(self.images, torch.Tensor):
            return ((idx, self.images[idx]) for idx in batches)
        self._order.batches = [b.tolist() for b in batches]
        return zip(batches, self._get_loader())

    def sequential(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every image once, in order, ``batch_size`` at a time (evaluation)."""
        n = int(self.images.shape[0])
        if isinstance(self.images, torch.Tensor):
            return (self.images[i : i + batch_size] for i in range(0, n, batch_size))
        return (x for _, x in self(torch.arange(n), range(0, n, batch_size), batch_size))

    def _get_loader(self) -> DataLoader:
        if self._loader is None:
            w = self.workers
            fork = "fork" in multiprocessing.get_all_start_methods()
            self._loader = DataLoader(
                _Rows(self.images),
                batch_sampler=self._order,
                num_workers=w,
                collate_fn=_as_is,
                pin_memory=self.pin_memory,
                persistent_workers=w > 0,
                # fork: a worker starts in milliseconds and shares the row addresses; it runs only numpy reads
                multiprocessing_context=multiprocessing.get_context("fork") if w > 0 and fork else None,
                # each pass draws a worker seed from this generator; from the global one it would shift
                # dropout's random numbers and the weights would differ from the tensor path's
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the reader is garbage-collected)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (case index per sample, inputs, targets)


class TrainBatches(Protocol):
    """One training run's batches, as a task hands them to :func:`shared.training.train_model`.

    The loop owns the random generator and passes it to :meth:`epoch` at the start of every epoch, so the
    same seed gives the same batches whatever the task draws (an order, patches, ...).
    """

    sample_ndim: int  # rank of a batch of inputs (N, C, *spatial): 4 for 2D images, 5 for 3D patches
    steps: int  # optimizer steps per epoch (at least 1)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """The epoch's batches ``(idx, x, y)``; draws from ``generator`` before returning (not lazily)."""
        ...

    def close(self) -> None:
        """Release worker processes or open files; called once, when training ends (or fails)."""
        ...


class ImageBatches:
    """Whole images in a seeded permutation per epoch, ``targets[idx]`` beside them: every 2D task's batches.

    Exactly the loop's batches from before tasks could choose them: one ``randperm`` per epoch, batches of
    ``batch_size`` in that order, a last batch of a single image skipped (BatchNorm cannot train on one).
    """

    def __init__(
        self, images: torch.Tensor | PackedImages, targets: torch.Tensor, batch_size: int, pin_memory: bool
    ) -> None:
        self.n = int(images.shape[0])
        self.batch_size = int(batch_size)
        self.starts = [s for s in range(0, self.n, self.batch_size) if self.n - s >= 2]
        self.steps = len(self.starts)
        self.sample_ndim = int(images.ndim)
        self.targets = targets
        self._read = BatchReader(images, pin_memory=pin_memory)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=generator)  # drawn now, before the epoch's augmentation draws
        return ((idx, x, self.targets[idx]) for idx, x in self._read(perm, self.starts, self.batch_size))

    def close(self) -> None:
        self._read.close()
