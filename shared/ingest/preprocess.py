"""Turn decoded modality values into a fixed-size model input.

Order matters and is fixed (it is part of the cache key and of every model
file): pad to square with the image minimum (keeps anatomy proportions across
matrix shapes), area-resample to ``image_size`` (anti-aliased downsampling),
then a robust percentile window to [0, 1]. The window is computed after the
resample: it is cheaper (the percentile runs on S×S values, not the full
matrix) and steadier, because averaging has already removed salt noise and
burnt-in single-pixel markers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import PreprocessConfig


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Centre ``img`` in a square canvas filled with its minimum value."""
    h, w = img.shape
    if h == w:
        return img
    side = max(h, w)
    out = np.full((side, side), img.min(), dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def resample(img: np.ndarray, size: int) -> np.ndarray:
    """Area (box-filter) resampling when shrinking, bilinear when enlarging."""
    if img.shape == (size, size):
        return img.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    mode = "area" if img.shape[0] >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0, 0].numpy()


def percentile_window(img: np.ndarray, low_pct: float, high_pct: float) -> np.ndarray:
    """Map the [low, high] percentile range to [0, 1] and clip; robust to outliers and to any bit depth."""
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    out = (img - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def preprocess_image(values: np.ndarray, params: PreprocessConfig) -> np.ndarray:
    """Modality values (MONOCHROME2 orientation: bright = dense) → (S, S) float32 in [0, 1]."""
    img = resample(pad_to_square(values.astype(np.float32, copy=False)), params.image_size)
    return percentile_window(img, params.window_low_pct, params.window_high_pct)
