"""Turn decoded DICOM pixels into a fixed-size model input.

Order is fixed (it is part of the cache key and of every model file): pad to
square with the background value (keeps anatomy proportions across matrix
shapes), area-resample to ``image_size`` (anti-aliased box filter), apply the
linear modality rescale and the MONOCHROME1 inversion, then a robust
percentile window to [0, 1]. Rescale and inversion are affine, so they commute
with box resampling and run on S×S values instead of the full matrix; the
window is computed after the resample too, which is cheaper and steadier
(averaging has already removed salt noise and single-pixel burnt-in markers).
Pure NumPy + Pillow, no torch, so ingest worker processes start fast.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.config import PreprocessConfig
from shared.imaging.dicom_reader import DecodedImage


def pad_to_square(img: np.ndarray, fill: float) -> np.ndarray:
    """Centre ``img`` in a square canvas filled with ``fill``."""
    h, w = img.shape
    if h == w:
        return img
    side = max(h, w)
    out = np.full((side, side), fill, dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def resample(img: np.ndarray, size: int) -> np.ndarray:
    """Box-filter (area) resampling when shrinking, bilinear when enlarging; float32 in and out."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if img.shape == (size, size):
        return img
    h, w = img.shape
    if h % size == 0 and w % size == 0:  # exact area average, the common 2^k / integer case
        return img.reshape(size, h // size, size, w // size).mean(axis=(1, 3), dtype=np.float32)
    method = Image.Resampling.BOX if h >= size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(img, mode="F").resize((size, size), method), dtype=np.float32)


def percentile_window(img: np.ndarray, low_pct: float, high_pct: float) -> np.ndarray:
    """Map the [low, high] percentile range to [0, 1] and clip; robust to outliers and to any bit depth."""
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    out = (img - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def preprocess_image(decoded: DecodedImage, params: PreprocessConfig) -> np.ndarray:
    """Decoded pixels → (S, S) float32 in [0, 1], dense = bright."""
    pixels = decoded.pixels
    dark_is_high = decoded.invert != (decoded.slope < 0)  # which stored extreme is the dark background
    fill = float(pixels.max() if dark_is_high else pixels.min())
    small = resample(pad_to_square(pixels.astype(np.float32, copy=False), fill), params.image_size)
    small = small * np.float32(decoded.slope) + np.float32(decoded.intercept)
    if decoded.invert:
        small = -small
    return percentile_window(small, params.window_low_pct, params.window_high_pct)
