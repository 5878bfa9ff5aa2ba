"""Small synthetic CT-like cases for the 3D segmentation tests: a bright sphere (label 1) and a cube (label 2).

Each case has its own shape (``size`` ± 4 voxels per axis), sphere radius and place, and cube side and
place (never overlapping the sphere), on a noisy background; intensities in [0, 1] like a windowed CT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.tasks.segmentation3d.dataset import PatchSampling, VolumeCases

LABELS = ["sphere", "cube"]
SPACING = (1.5, 1.0, 1.0)


def sphere_and_cube(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image float32, label map uint8)."""
    img = (0.2 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    r = rng.uniform(4, 7)
    c = [rng.uniform(r + 1, s - r - 1) for s in shape]
    sphere = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    side = int(rng.integers(5, 9))
    for _ in range(100):
        o = [int(rng.integers(1, s - side - 1)) for s in shape]
        cube = np.zeros(shape, bool)
        cube[o[0] : o[0] + side, o[1] : o[1] + side, o[2] : o[2] + side] = True
        if not (cube & sphere).any():
            break
    lab[sphere], lab[cube] = 1, 2
    img[sphere] += 0.5
    img[cube] += 0.3
    return np.clip(img, 0, 1), lab


def make_cases(n: int, seed: int = 0, size: int = 40, patch: int = 32, patches_per_case: int = 4) -> VolumeCases:
    """``n`` in-memory cases of about ``size``³ voxels (shapes differ), patches of ``patch``³."""
    rng = np.random.default_rng(seed)
    images, maps = [], []
    for _ in range(n):
        shape = tuple(int(s) for s in rng.integers(size - 4, size + 5, 3))
        img, lab = sphere_and_cube(rng, shape)
        images.append(img)
        maps.append(lab)
    return VolumeCases.from_arrays(
        images,
        maps,
        [SPACING] * n,
        LABELS,
        groups=[f"patient-{i}" for i in range(n)],
        sampling=PatchSampling(patch_size=patch, patches_per_case=patches_per_case),
    )


def write_npy_cases(data: VolumeCases, folder: Path, uint16: bool = False) -> tuple[list[Path], list[Path]]:
    """Save ``data``'s cases as .npy files (images as uint16 × 1/65535 with ``uint16``); (image, label) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images, maps = [], []
    for i in range(len(data)):
        img = data.read_image(i)
        stored = np.round(img * 65535).astype(np.uint16) if uint16 else img
        images.append(folder / f"image-{i}.npy")
        maps.append(folder / f"labels-{i}.npy")
        np.save(images[-1], stored)
        np.save(maps[-1], data.read_labels(i))
    return images, maps
