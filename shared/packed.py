"""A site's images as a tensor-like view over the cache's shards: memory that does not grow with the site.

:class:`PackedImages` answers what the datasets, the training loop and the
evaluation ask of ``images``: ``len``, ``shape``, ``ndim``, indexing with an
int, a slice, a list or an index tensor (a float32 tensor comes back, read
from the shards for those rows only) and :func:`take` / :func:`cat` for
subsets and pooled sites, which move row addresses, never pixels. What it
holds per image is an address (40 bytes), so a 100,000-image site costs a few
MB here. Small in-memory tensors (tests, synthetic data) stay tensors; the
helpers below take either.

A row whose CRC does not match is decoded again from its DICOM file (the
:class:`RowRepair` built by :func:`from_scan`), dropped from the index so the
next scan rewrites it, and training goes on with the same bits it would have
had. ``numpy()`` loads everything: for tests and small reports only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import ConfigError, PreprocessConfig
from shared.imaging.pack import PACK_DTYPE, READER, ShardError, checksum, from_pack, to_pack

# Columns of PackedImages.loc: the source (>= 0 a shard, < 0 memory array -1-k), its row, the row's CRC-32,
# the repair able to rebuild it (-1 none) and the image's index in that repair's lists.
SRC, ROW, CRC, REPAIR, ORIGIN = range(5)


class CorruptPackError(RuntimeError):
    """A damaged cache row with no DICOM file to rebuild it from."""


@dataclass(frozen=True)
class RowRepair:
    """How to rebuild damaged rows of one scan: decode the DICOM file again (picklable for loader workers)."""

    data_dir: str
    params: PreprocessConfig
    paths: tuple[str, ...]  # per image, relative to data_dir
    shas: tuple[str, ...]
    index: str | None  # the cache's index.sqlite, to forget the bad row
    tag: str

    def __call__(self, i: int, where: str) -> np.ndarray:
        from shared.imaging.cache import drop_row
        from shared.imaging.modality import preprocess, read_image

        path = Path(self.data_dir) / self.paths[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, decoded = read_image(path.read_bytes())
            row = to_pack(preprocess(decoded, self.params))
        except Exception as exc:  # gone, changed or unreadable since the scan
            raise CorruptPackError(
                f"image cache: {where} is damaged and {path} cannot be decoded again ({exc}); "
                "run `fedrad-site check` to rebuild the cache"
            ) from None
        if self.index is not None:
            drop_row(self.index, self.tag, self.shas[i])
        warnings.warn(
            f"image cache: {where} was damaged; decoded {path} again (the next scan rewrites the cache row)",
            RuntimeWarning,
            stacklevel=3,
        )
        return row


class PackedImages:
    """(N, 1, *row_shape) float32 images, read on demand from cache shards (or uint16/float32 rows in memory)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(
        self,
        row_shape: Sequence[int],
        shards: Sequence[str],
        loc: np.ndarray,
        memory: Sequence[np.ndarray] = (),
        repairs: Sequence[RowRepair] = (),
        workers: int | None = None,
    ) -> None:
        self.row_shape = tuple(int(s) for s in row_shape)
        self.shards = tuple(shards)
        self.memory = tuple(memory)
        self.repairs = tuple(repairs)
        self.loc = np.asarray(loc, dtype=np.int64).reshape(-1, 5)
        self.workers = workers  # DataLoader processes reading these (None: shared.batches decides)

    # -- what a tensor answers ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.loc.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 1, *self.row_shape))

    @property
    def ndim(self) -> int:
        return 2 + len(self.row_shape)

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        return f"PackedImages(shape={tuple(self.shape)}, shards={len(self.shards)}, memory={len(self.memory)})"

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        single = isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0)
        rows = self._positions(key)
        out = torch.from_numpy(self.read(rows))
        if single:
            return out[0][rest] if rest else out[0]
        return out[(slice(None), *rest)] if rest else out

    def numpy(self) -> np.ndarray:
        """Every image as one float32 array: loads the whole site; tests and small reports only."""
        return self.read(np.arange(len(self)))

    def _positions(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        idx = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        if idx.dtype == np.bool_:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} images")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.max() >= n or idx.min() < -n):
            raise IndexError(f"index out of range for {n} images")
        return np.where(idx < 0, idx + n, idx)

    # -- reading ------------------------------------------------------------------------------
    def read(self, positions: np.ndarray) -> np.ndarray:
        """The images at ``positions`` as a new float32 array (k, 1, *row_shape)."""
        k = len(positions)
        out = np.empty((k, 1, *self.row_shape), dtype=np.float32)
        packed = np.empty((k, *self.row_shape), dtype=PACK_DTYPE)
        is_float = np.zeros(k, dtype=bool)
        for j, i in enumerate(np.asarray(positions, dtype=np.int64)):
            src, row, crc, repair, origin = (int(v) for v in self.loc[i])
            if src < 0:
                arr = self.memory[-1 - src][row]
                if arr.dtype == PACK_DTYPE:
                    packed[j] = arr
                else:
                    out[j, 0], is_float[j] = arr, True
                continue
            path = self.shards[src]
            try:
                READER.read(path, row, packed[j])
                ok = checksum(packed[j]) == crc
            except ShardError:
                ok = False
            if not ok:
                where = f"row {row} of shard {path}"
                if repair < 0:
                    raise CorruptPackError(
                        f"image cache: {where} is damaged and its DICOM file is unknown; delete the cache "
                        f"folder ({Path(path).parents[2]}) and scan the site again"
                    )
                packed[j] = self.repairs[repair](origin, where)
        if is_float.all():
            return out
        if not is_float.any():
            from_pack(packed, out=out[:, 0])
        else:
            out[~is_float, 0] = from_pack(packed[~is_float])
        return out


def take(images: torch.Tensor | PackedImages, index: Any) -> torch.Tensor | PackedImages:
    """``images[index]`` for a tensor; the same rows' addresses (no pixels read) for packed images."""
    if isinstance(images, PackedImages):
        idx = torch.as_tensor(index, dtype=torch.long).numpy()
        return PackedImages(
            images.row_shape, images.shards, images.loc[idx], images.memory, images.repairs, images.workers
        )
    return images[torch.as_tensor(index, dtype=torch.long)]


def cat(parts: Sequence[torch.Tensor | PackedImages]) -> torch.Tensor | PackedImages:
    """Images of several parts, in order: ``torch.cat`` for tensors; addresses only when any part is packed."""
    if not any(isinstance(p, PackedImages) for p in parts):
        return torch.cat(list(parts))
    shapes = {tuple(p.shape[2:]) for p in parts if len(p)} or {tuple(parts[0].shape[2:])}
    if len(shapes) != 1:
        raise ValueError(f"cannot pool images of different shapes: {sorted(shapes)}")
    shards: list[str] = []
    memory: list[np.ndarray] = []
    repairs: list[RowRepair] = []
    locs = []
    workers = None
    for part in parts:
        if not isinstance(part, PackedImages):  # an in-memory part becomes one memory source of float32 rows
            rows = part.detach().to(torch.float32).reshape(len(part), *part.shape[2:]).numpy()
            part = PackedImages(part.shape[2:], (), _memory_loc(len(rows)), memory=(rows,))
        loc = part.loc.copy()
        on_disk = loc[:, SRC] >= 0
        loc[on_disk, SRC] += len(shards)
        loc[~on_disk, SRC] -= len(memory)
        loc[loc[:, REPAIR] >= 0, REPAIR] += len(repairs)
        shards += part.shards
        memory += part.memory
        repairs += part.repairs
        locs.append(loc)
        workers = part.workers if workers is None else workers
    return PackedImages(shapes.pop(), shards, np.concatenate(locs), memory, repairs, workers)


def _memory_loc(n: int, source: int = 0) -> np.ndarray:
    loc = np.zeros((n, 5), dtype=np.int64)
    loc[:, SRC], loc[:, ROW], loc[:, REPAIR] = -1 - source, np.arange(n), -1
    return loc


def to_tensor(images: torch.Tensor | PackedImages) -> torch.Tensor:
    """All images as one tensor: loads the whole site (benchmarks and tests on small cohorts only)."""
    return torch.from_numpy(images.numpy()) if isinstance(images, PackedImages) else images


def from_cache(
    cache: Any,
    shas: Sequence[str],
    row_shape: Sequence[int],
    workers: int | None = None,
    repair: RowRepair | None = None,
) -> PackedImages:
    """The cached images of content hashes ``shas`` (an :class:`shared.imaging.cache.IngestCache`, flushed), in
    that order, as addresses; ``row_shape`` is used when there are none. Nothing is read.

    With ``repair``, a damaged row is decoded again from the ``i``-th of its files (``i`` the position in
    ``shas``). Rows kept in memory (an unwritable cache) are referenced, not copied."""
    shards: dict[str, int] = {}
    memory: list[np.ndarray] = []
    loc = np.zeros((len(shas), 5), dtype=np.int64)
    shapes = set()
    for i, sha in enumerate(shas):
        ref = cache.locate(sha)
        if ref is None:
            raise ValueError(f"image {sha[:12]}… is not in the cache {cache.root}: scan the site first")
        shapes.add(ref.shape)
        if ref.array is not None:
            loc[i] = (-1 - len(memory), 0, 0, -1, i)
            memory.append(ref.array[None])
        else:
            loc[i] = (shards.setdefault(ref.path, len(shards)), ref.row, ref.crc, -1, i)
    if len(shapes) > 1:
        raise ValueError(
            f"the images have different array shapes {sorted(shapes)}; one dataset needs one shape "
            "(train one modality at a time)"
        )
    if repair is not None:
        loc[:, REPAIR] = 0
    shape = shapes.pop() if shapes else tuple(row_shape)
    return PackedImages(shape, list(shards), loc, memory, (repair,) if repair is not None else (), workers)


def from_scan(scan: Any, records: Sequence[Any], row_shape: Sequence[int], workers: int | None = None) -> PackedImages:
    """The images of ``records`` (usable records of ``scan``, a :class:`shared.imaging.scan.ScanResult`), in
    that order, as addresses in the cache; ``row_shape`` is used when there are none.

    Images missing from the cache are decoded first; nothing else is read. A damaged row found later is
    decoded again from its DICOM file (:class:`RowRepair`)."""
    records = list(records)
    scan.ensure_cached(records)
    cache = scan.cache
    repair = RowRepair(
        data_dir=str(scan.data_dir),
        params=cache.params,
        paths=tuple(r.path for r in records),
        shas=tuple(r.sha256 for r in records),
        index=str(cache.index_path) if cache.index_path is not None else None,
        tag=cache.tag,
    )
    try:
        return from_cache(cache, repair.shas, row_shape, workers, repair)
    except ValueError as exc:
        raise ConfigError(f"{scan.data_dir}: {exc}") from None
