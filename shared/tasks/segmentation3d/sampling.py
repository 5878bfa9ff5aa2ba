"""Training patches from memory-mapped volumes: seeded, foreground/background balanced, padded when small.

A whole CT does not fit a batch (nor, on most GPUs, a forward pass), so each training step is a batch of
cubic patches of the model's input size. :class:`PatchBatches` is the task's
:class:`shared.batches.TrainBatches`: :func:`shared.training.train_model` hands it the loop's generator at
each epoch, and every random choice of the epoch (which case, foreground or background, which centre) is
drawn from it at once, so the same seed gives the same patches, bit for bit.

Where a patch is centred follows MONAI's ``RandCropByPosNegLabel``: with probability
``PatchSampling.foreground`` on a voxel of a segment present in the case (the segment chosen uniformly
among those present, so a small organ is trained as often as a large one, as ``RandCropByLabelClasses``
does), else on a background voxel. The centre is then shifted so the patch lies inside the volume; along
an axis where the volume is smaller than the patch, the volume is centred in the patch and the rest is
padded with 0 (the image's window minimum; label 0, background), as MONAI's ``SpatialPad`` does.

Memory: candidate centres are not every foreground voxel (millions in a liver) but a uniform sample of
at most :data:`CANDIDATES` voxels per class and case (6 bytes each: 6 KiB per class and case), found
once per dataset by streaming each label map a slab at a time (:func:`~shared.tasks.segmentation3d.dataset.slabs`:
one pass to count the classes, one to sample them), and kept on the dataset across federated rounds. A
patch reads only its own region of the memmap.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from shared.tasks.segmentation3d.dataset import VolumeCases, slabs

CANDIDATES = 1024  # centres remembered per class and case: plenty of distinct patches, 6 KiB per class


def centre_candidates(data: VolumeCases, i: int, k: int = CANDIDATES) -> list[np.ndarray]:
    """Per class 0..K, up to ``k`` voxel indices (m, 3) of that class in case ``i``, a uniform sample;
    empty where the class is absent. Seeded by the case's position: the same dataset gives the same table."""
    counts = data.label_counts(i)
    rng = np.random.default_rng([i, len(data)])
    # Thin each class's voxels with probability ~2k/count while streaming, then keep k of them: uniform,
    # and never more than a slab's worth of indices in memory.
    keep_p = np.minimum(1.0, 2.0 * k / np.maximum(counts, 1))
    picked: list[list[np.ndarray]] = [[] for _ in counts]
    shape = data.shape(i)
    for z in slabs(shape):
        slab = data.read_labels(i, (z,))
        for c in np.flatnonzero(counts):
            flat = np.flatnonzero(slab == c)
            if keep_p[c] < 1.0:  # each voxel kept with probability keep_p: a binomial count, then which ones
                flat = flat[np.sort(rng.choice(flat.size, size=rng.binomial(flat.size, keep_p[c]), replace=False))]
            if flat.size:
                picked[c].append(flat + z.start * shape[1] * shape[2])
    data.release(i)
    out = []
    for c in range(len(counts)):
        flat = np.concatenate(picked[c]) if picked[c] else np.zeros(0, dtype=np.int64)
        if flat.size > k:
            flat = np.sort(rng.choice(flat, size=k, replace=False))
        out.append(
            np.stack(np.unravel_index(flat, shape), axis=1).astype(np.uint16 if max(shape) < 65536 else np.int64)
        )
    return out


def candidates_of(data: VolumeCases) -> list[list[np.ndarray]]:
    """:func:`centre_candidates` of every case, computed once per dataset (kept on it, a few KiB per case)."""
    key = ("centres", CANDIDATES)
    if key not in data.cache:
        data.cache[key] = [centre_candidates(data, i) for i in range(len(data))]
    return data.cache[key]


def crop_region(centre: np.ndarray, shape: tuple[int, ...], patch: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(region of the volume, where it goes in the patch) for a cube of side ``patch`` centred near ``centre``:
    shifted to lie inside the volume, or the whole axis centred in the patch where the volume is smaller."""
    src, dst = [], []
    for c, size in zip(centre, shape, strict=True):
        if size >= patch:
            start = int(np.clip(int(c) - patch // 2, 0, size - patch))
            src.append(slice(start, start + patch))
            dst.append(slice(0, patch))
        else:
            offset = (patch - size) // 2
            src.append(slice(0, size))
            dst.append(slice(offset, offset + size))
    return tuple(src), tuple(dst)


def read_patch(data: VolumeCases, i: int, centre: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Case ``i``'s image (float32) and label (uint8) patches, each (patch, patch, patch), zero-padded."""
    src, dst = crop_region(centre, data.shape(i), patch)
    image = np.zeros((patch,) * 3, dtype=np.float32)
    label = np.zeros((patch,) * 3, dtype=np.uint8)
    image[dst] = data.read_image(i, src)
    label[dst] = data.read_labels(i, src)
    return image, label


class PatchBatches:
    """An epoch of ``patches_per_case × cases`` patches, ``batch_size`` a step (the task's TrainBatches).

    Each case appears ``patches_per_case`` times, in a seeded random order; a last batch of one patch is
    dropped (normalisation layers need two). ``y`` is the label patch (B, 1, p, p, p) int64, what MONAI's
    ``DiceCELoss(to_onehot_y=True)`` takes; ``idx`` the case of each patch.
    """

    sample_ndim = 5

    def __init__(self, data: VolumeCases, batch_size: int) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.patch = int(data.sampling.patch_size)
        self.n_patches = len(data) * data.sampling.patches_per_case
        self.starts = [s for s in range(0, self.n_patches, self.batch_size) if self.n_patches - s >= 2]
        self.steps = len(self.starts)

    def plan(self, generator: torch.Generator) -> list[tuple[int, np.ndarray]]:
        """The epoch's (case, centre) per patch, every draw made now from ``generator``."""
        table = candidates_of(self.data)
        n, ppc = len(self.data), self.data.sampling.patches_per_case
        cases = torch.arange(n).repeat(ppc)[torch.randperm(n * ppc, generator=generator)].tolist()
        fg = (torch.rand(len(cases), generator=generator) < self.data.sampling.foreground).tolist()
        pick = torch.rand((len(cases), 2), generator=generator, dtype=torch.float64).numpy()
        out = []
        for case, want_fg, (u_class, u_voxel) in zip(cases, fg, pick, strict=True):
            present = [c for c in range(1, len(table[case])) if len(table[case][c])]
            if want_fg and present:
                options = present
            else:  # background, or a case without any segment; a volume that is all segment: any segment
                options = [0] if len(table[case][0]) else present
            c = options[min(int(u_class * len(options)), len(options) - 1)]
            voxels = table[case][c]
            out.append((case, voxels[min(int(u_voxel * len(voxels)), len(voxels) - 1)]))
        return out

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        plan = self.plan(generator)
        return (self._batch(plan[s : s + self.batch_size]) for s in self.starts)

    def _batch(self, part: list[tuple[int, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = zip(*(read_patch(self.data, case, centre, self.patch) for case, centre in part), strict=True)
        for case in {case for case, _ in part}:
            self.data.release(case)
        idx = torch.tensor([case for case, _ in part], dtype=torch.long)
        x = torch.from_numpy(np.stack(images)[:, None])
        y = torch.from_numpy(np.stack(labels)[:, None]).long()
        return idx, x, y

    def close(self) -> None:
        """Nothing to release: patches are read in this process, from the dataset's memmaps."""
