"""A site's CT/MR cases for 3D segmentation: volumes that stay on disk, read a patch at a time.

Each case is an image volume (D, H, W), its label map (D, H, W) uint8 (0 background, 1..K the task's
segments in ``labels`` order), its voxel spacing in mm and its patient group. The volumes come already
assembled, canonical (axis 0 → Superior, 1 → Posterior, 2 → Left: :mod:`shared.imaging.volume_geometry`),
resampled to the consortium's spacing and windowed to [0, 1]. Cases differ in shape, so there is no
(N, C, *spatial) tensor: :class:`VolumeCases` keeps one array per case, normally an ``np.memmap`` of the
site's volume cache, and nothing here reads a whole volume into RAM except the one case being scored
(:mod:`shared.tasks.segmentation3d.inference`). Mapped pages once read are handed back
(:func:`release_pages`) after each case and each batch. A site's memory therefore does not grow with its
number of cases; training reads patches (:mod:`shared.tasks.segmentation3d.sampling`).

Stored intensities: float (16/32/64 bit) are used as they are; integer volumes (e.g. uint16, the cache's
quantised form) need ``intensity_scale``, the factor that maps a stored value to [0, 1] (1/65535 for the
full uint16 range). Reading a region always gives float32 (:meth:`VolumeCases.read_image`).
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import ClassVar

import numpy as np

Spacing3 = tuple[float, float, float]  # mm along array axes 0, 1, 2
MAX_LABELS = 254  # label maps are uint8; 255 is left free for "unknown" should a site ever need it


@dataclass(frozen=True)
class PatchSampling:
    """How training draws patches from the cases (:mod:`shared.tasks.segmentation3d.sampling`).

    ``patch_size``: the side of the cubic patch, in voxels: the task's image size (``TaskSpec.image_size``),
    also the sliding window of inference. ``patches_per_case``: an epoch is this many patches per training case (a federated round of one local
    epoch sees every case this often). ``foreground``: the share of patches centred on a segment voxel (a
    segment present in the case, chosen uniformly, so a small organ is drawn as often as a large one); the
    rest are centred on a background voxel. MONAI's ``RandCropByPosNegLabel`` with pos=1, neg=1 is 0.5.
    """

    patch_size: int = 64
    patches_per_case: int = 4
    foreground: float = 0.5

    def __post_init__(self) -> None:
        if int(self.patch_size) < 8:
            raise ValueError(f"patch_size must be at least 8 voxels, got {self.patch_size}")
        if int(self.patches_per_case) < 1:
            raise ValueError(f"patches_per_case must be at least 1, got {self.patches_per_case}")
        if not 0.0 <= float(self.foreground) <= 1.0:
            raise ValueError(f"foreground must be a share in [0, 1], got {self.foreground}")


@dataclass
class VolumeCases:
    """Cases of a 3D segmentation task (see the module docstring). Build with :meth:`from_arrays` or
    :meth:`from_npy`; the arrays are kept as given (a memmap stays a memmap)."""

    task_name: ClassVar[str] = "segmentation3d"

    images: list[np.ndarray]  # per case (D, H, W): float, or integer with intensity_scale
    label_maps: list[np.ndarray]  # per case (D, H, W) uint8: 0 background, k = labels[k - 1]
    spacing: list[Spacing3]  # per case, mm per voxel along axes 0, 1, 2 (HD95 is in mm)
    labels: list[str]  # the task's segment names
    groups: list[str] = field(default_factory=list)  # patient grouping key per case (site-local)
    case_ids: list[str] = field(default_factory=list)  # site-local names for the report
    intensity_scale: list[float | None] = field(default_factory=list)  # per case; None: float volume as stored
    sampling: PatchSampling = field(default_factory=PatchSampling)
    # Derived from the label maps, computed on first use and kept (voxels per class, centre candidates): a few
    # KiB per case. A subset keeps the counts of its cases.
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not self.labels or len(self.labels) > MAX_LABELS:
            raise ValueError(f"a 3D segmentation needs 1..{MAX_LABELS} segment labels, got {self.labels}")
        if len(self.label_maps) != n or len(self.spacing) != n:
            raise ValueError(f"{n} images, {len(self.label_maps)} label maps and {len(self.spacing)} spacings")
        self.groups = list(self.groups) or [f"case-{i}" for i in range(n)]
        self.case_ids = list(self.case_ids) or [f"case-{i + 1:04d}" for i in range(n)]
        self.intensity_scale = list(self.intensity_scale) or [None] * n
        for what, values in (("groups", self.groups), ("case_ids", self.case_ids), ("scales", self.intensity_scale)):
            if len(values) != n:
                raise ValueError(f"{len(values)} {what} for {n} cases")
        self.spacing = [_check_spacing(s, i) for i, s in enumerate(self.spacing)]
        for i, (img, lab) in enumerate(zip(self.images, self.label_maps, strict=True)):
            if img.ndim != 3 or lab.shape != img.shape:
                raise ValueError(f"case {i}: image {img.shape} and label map {lab.shape} must both be (D, H, W)")
            if lab.dtype != np.uint8:
                raise ValueError(f"case {i}: a label map is uint8 (0 background, 1..K segments), got {lab.dtype}")
            scale = self.intensity_scale[i]
            if np.issubdtype(img.dtype, np.integer):
                if scale is None or not (math.isfinite(scale) and scale > 0):
                    raise ValueError(
                        f"case {i}: an integer ({img.dtype}) volume needs its intensity_scale (stored value × "
                        "scale = [0, 1] intensity), e.g. 1/65535 for uint16"
                    )
            elif not np.issubdtype(img.dtype, np.floating):
                raise ValueError(f"case {i}: image dtype {img.dtype} is neither float nor integer")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: Sequence[np.ndarray],
        label_maps: Sequence[np.ndarray],
        spacing: Sequence[Sequence[float]],
        labels: Sequence[str],
        groups: Sequence[str] | None = None,
        case_ids: Sequence[str] | None = None,
        intensity_scale: float | Sequence[float | None] | None = None,
        sampling: PatchSampling | None = None,
    ) -> VolumeCases:
        """Cases from arrays (in memory or ``np.memmap``, kept as given); one ``intensity_scale`` may serve all."""
        n = len(images)
        scales = [intensity_scale] * n if intensity_scale is None or np.isscalar(intensity_scale) else intensity_scale
        return cls(
            images=list(images),
            label_maps=list(label_maps),
            spacing=[tuple(float(v) for v in s) for s in spacing],
            labels=list(labels),
            groups=list(groups or []),
            case_ids=list(case_ids or []),
            intensity_scale=[None if s is None else float(s) for s in scales],
            sampling=sampling or PatchSampling(),
        )

    @classmethod
    def from_npy(
        cls,
        image_paths: Sequence[str | PathLike],
        label_paths: Sequence[str | PathLike],
        spacing: Sequence[Sequence[float]],
        labels: Sequence[str],
        **kwargs,
    ) -> VolumeCases:
        """Cases from ``.npy`` files, opened memory-mapped read-only (nothing is read until a patch is);
        ``kwargs`` as :meth:`from_arrays`."""
        images = [np.load(p, mmap_mode="r") for p in image_paths]
        maps = [np.load(p, mmap_mode="r") for p in label_paths]
        return cls.from_arrays(images, maps, spacing, labels, **kwargs)

    # -- the TaskDataset protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Sequence[int] | np.ndarray) -> VolumeCases:
        """The cases at ``index``, in that order (the arrays are shared, not copied)."""
        idx = [int(i) for i in np.asarray(index, dtype=np.int64).reshape(-1)]
        out = replace(
            self,
            images=[self.images[i] for i in idx],
            label_maps=[self.label_maps[i] for i in idx],
            spacing=[self.spacing[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            case_ids=[self.case_ids[i] for i in idx],
            intensity_scale=[self.intensity_scale[i] for i in idx],
        )
        counts = self.cache.get("counts", {})
        out.cache["counts"] = {j: counts[i] for j, i in enumerate(idx) if i in counts}
        return out

    # -- reading ------------------------------------------------------------------------------------
    def read_image(self, i: int, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Case ``i``'s intensities over ``region`` (default: the whole volume): a float32 copy in [0, 1]."""
        raw = self.images[i][region] if region is not None else self.images[i]
        out = np.array(raw, dtype=np.float32)
        scale = self.intensity_scale[i]
        if scale is not None:
            out *= np.float32(scale)
        return out

    def read_labels(self, i: int, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Case ``i``'s label map over ``region`` (default: the whole volume): a uint8 copy."""
        raw = self.label_maps[i][region] if region is not None else self.label_maps[i]
        return np.array(raw, dtype=np.uint8)

    def release(self, i: int) -> None:
        """Drop case ``i``'s memory-mapped pages from this process's resident set (see :func:`release_pages`)."""
        release_pages(self.images[i])
        release_pages(self.label_maps[i])

    def shape(self, i: int) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images[i].shape)  # type: ignore[return-value]

    def label_counts(self, i: int) -> np.ndarray:
        """Voxels per class (0 background, 1..K) of case ``i``, read slab by slab once and kept (subsets keep
        them too); ValueError for a value > K."""
        known = self.cache.setdefault("counts", {})
        if i not in known:
            known[i] = self._count_labels(i)
        return known[i]

    def _count_labels(self, i: int) -> np.ndarray:
        n_classes = len(self.labels) + 1
        counts = np.zeros(256, dtype=np.int64)
        for z in slabs(self.shape(i)):
            counts += np.bincount(self.read_labels(i, (z,)).ravel(), minlength=256)
        self.release(i)
        if counts[n_classes:].any():
            bad = int(np.flatnonzero(counts[n_classes:])[0]) + n_classes
            raise ValueError(
                f"case {self.case_ids[i]}: label value {bad} in its label map, but the task has {n_classes - 1} "
                f"segment(s) {self.labels} (values 0..{n_classes - 1})"
            )
        return counts[:n_classes]

    def presence(self) -> np.ndarray:
        """(N, K) bool: which segments each case's label map contains (from :meth:`label_counts`)."""
        rows = [self.label_counts(i)[1:] > 0 for i in range(len(self))]
        return np.array(rows, dtype=bool).reshape(len(self), len(self.labels))


# Voxels handled at a time when a whole label map is scanned (at least one axis-0 slice): numpy's bincount
# and flatnonzero make 8 bytes per voxel, so 0.5 MiB of index arrays rather than 8 bytes per voxel of a volume.
SLAB_VOXELS = 1 << 16


def slabs(shape: tuple[int, ...]) -> list[slice]:
    """Runs of axis-0 slices of at most :data:`SLAB_VOXELS` voxels: a label map is scanned a slab at a time."""
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(z, min(shape[0], z + step)) for z in range(0, shape[0], step)]


def release_pages(array: np.ndarray) -> None:
    """Tell the kernel this process no longer needs ``array``'s mapped pages (``MADV_DONTNEED``); nothing for an
    in-memory array.

    Why: pages of a memory-mapped file that were read stay in the process's resident set while the mapping
    lives, so an epoch of patches from every case, or an evaluation of every volume, would grow it towards
    the whole cache (the reason the 2D cache reads with ``pread``: ``docs/architecture.md``). The pages stay
    in the page cache, so reading them again costs a minor fault, not a disk read.
    """
    mapping = getattr(array, "_mmap", None)  # np.memmap (and its views) keep their mmap.mmap here
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(ValueError, OSError):  # a closed mapping, or a platform without madvise
        mapping.madvise(mmap.MADV_DONTNEED)


def _check_spacing(s: Sequence[float], i: int) -> Spacing3:
    values = tuple(float(v) for v in s)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"case {i}: spacing must be three positive numbers (mm along axes 0, 1, 2), got {s}")
    return values  # type: ignore[return-value]


def concat_volume_cases(parts: list[VolumeCases]) -> VolumeCases:
    """Several sites' cases as one (same labels); patient groups prefixed per site so they never collide."""
    if not parts:
        raise ValueError("nothing to concatenate")
    labels = parts[0].labels
    if any(p.labels != labels for p in parts):
        raise ValueError("datasets have different segment labels")
    return VolumeCases(
        images=[x for p in parts for x in p.images],
        label_maps=[x for p in parts for x in p.label_maps],
        spacing=[x for p in parts for x in p.spacing],
        labels=list(labels),
        groups=[f"{i}:{g}" for i, p in enumerate(parts) for g in p.groups],
        case_ids=[f"{i}:{c}" for i, p in enumerate(parts) for c in p.case_ids],
        intensity_scale=[x for p in parts for x in p.intensity_scale],
        sampling=parts[0].sampling,
    )


def split_volume_cases(data: VolumeCases, fraction: float, seed: int) -> tuple[VolumeCases, VolumeCases]:
    """(train, held-out) by patient group, stratified by whether a case has any segment at all."""
    from shared.splits import stratified_group_split

    strata = data.presence().any(axis=1).astype(int).tolist()
    train_idx, val_idx = stratified_group_split(strata, data.groups, fraction, seed)
    return data.subset(np.asarray(train_idx)), data.subset(np.asarray(val_idx))
