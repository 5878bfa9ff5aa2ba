"""Planar (projection) radiographs: one single-frame grey-scale DICOM image → one (S, S) model input.

The ``planar`` modality of :mod:`shared.imaging.modality` (rank 2): which objects it
accepts (:func:`check`), how it decodes them (:func:`decode`) and preprocesses
them (:func:`preprocess_image`), and the reason codes it can emit (``REASONS``).

Preprocessing order is fixed (it is part of the cache key and of every model file): pad to
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

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

from shared.config import PreprocessConfig
from shared.imaging.dicom_reader import ImageHeader, _int, pixel_array
from shared.imaging.reasons import Reason, Rejection

NAME = "planar"
RANK = 2
MIN_SIDE = 32
COLOUR_PHOTOMETRICS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420"}
# Every code check/decode can raise (pixel_array adds the decoder's: truncated, undecodable, corrupt).
REASONS = frozenset(
    {
        Reason.NOT_GRAYSCALE,
        Reason.MULTI_FRAME,
        Reason.TOO_SMALL,
        Reason.CONSTANT_IMAGE,
        Reason.CORRUPT_PIXEL_DATA,
        Reason.TRUNCATED,
        Reason.UNDECODABLE_TRANSFER_SYNTAX,
    }
)


def check(ds: pydicom.Dataset, header: ImageHeader) -> None:
    """Accept one grey-scale, single-frame image of at least MIN_SIDE² pixels; else raise its :class:`Rejection`."""
    samples = _int(ds, "SamplesPerPixel", 1)
    if samples != 1 or header.photometric in COLOUR_PHOTOMETRICS:
        raise Rejection(Reason.NOT_GRAYSCALE, f"{header.photometric or 'unknown'} with {samples} samples per pixel")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise Rejection(Reason.MULTI_FRAME, f"{frames} frames")
    if header.rows < MIN_SIDE or header.columns < MIN_SIDE:
        raise Rejection(Reason.TOO_SMALL, f"{header.rows}x{header.columns} pixels, minimum {MIN_SIDE}x{MIN_SIDE}")


@dataclass
class DecodedImage:
    """Decoded pixels plus the linear modality transform still to apply.

    The linear rescale (slope/intercept) and the MONOCHROME1 inversion commute
    with area resampling, so preprocessing applies them to the small resampled
    image instead of to every full-resolution pixel; only a non-linear
    ModalityLUTSequence is applied here, at full resolution.
    """

    modality: ClassVar[str] = NAME  # which modality preprocesses it (shared.imaging.modality.preprocess)
    pixels: np.ndarray  # stored values (or modality values when a LUT was applied)
    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False  # MONOCHROME1

    def modality_values(self) -> np.ndarray:
        """Full-resolution modality values, dense = bright (for inspection and tests)."""
        values = self.pixels.astype(np.float32) * self.slope + self.intercept
        return -values if self.invert else values


def decode(ds: pydicom.Dataset, header: ImageHeader) -> DecodedImage:
    """Stored pixels → :class:`DecodedImage`; rejects anything that is not a usable 2D grayscale image."""
    arr = pixel_array(ds, header)
    if arr.ndim != 2:
        raise Rejection(
            Reason.NOT_GRAYSCALE if arr.ndim == 3 and arr.shape[-1] in (3, 4) else Reason.MULTI_FRAME,
            f"decoded array has shape {arr.shape}",
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, "pixel values are not finite")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise Rejection(Reason.CONSTANT_IMAGE, f"all pixels equal {float(lo):g}")
    invert = header.photometric == "MONOCHROME1"  # high values are dark; flipped so dense = bright
    if "ModalityLUTSequence" in ds:  # a non-linear LUT must be applied at full resolution
        try:
            values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception as exc:
            raise Rejection(
                Reason.CORRUPT_PIXEL_DATA, f"modality LUT could not be applied ({type(exc).__name__})"
            ) from None
        return DecodedImage(values, invert=invert)
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, "RescaleSlope/RescaleIntercept are not numbers") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"unusable rescale (slope {slope:g}, intercept {intercept:g})")
    with np.errstate(over="ignore", invalid="ignore"):  # preprocessing runs in float32: the range must survive it
        ends = np.float32(slope) * np.array([lo, hi], dtype=np.float32) + np.float32(intercept)
    if not np.isfinite(ends).all() or ends[0] == ends[1]:
        raise Rejection(
            Reason.CORRUPT_PIXEL_DATA,
            f"rescale (slope {slope:g}, intercept {intercept:g}) overflows or flattens the pixel values in float32",
        )
    return DecodedImage(arr, slope=slope, intercept=intercept, invert=invert)


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


def model_input_spacing(header: ImageHeader, image_size: int) -> tuple[float, float] | None:
    """(row, column) millimetres per pixel of the (S, S) model input; None when the file has no usable spacing.

    Why here: the geometry is this module's. :func:`preprocess_image` pads to a square of the longer
    side and resamples that to S, so one model pixel spans ``max(rows, columns) / S`` native pixels on
    both axes. The native spacing is PixelSpacing, else ImagerPixelSpacing (at the detector, so
    distances come out magnified by the projection's geometry, typically 5-15 % for a chest film);
    :func:`shared.imaging.dicom_reader.read_header` reads it.
    """
    spacing = header.pixel_spacing
    if len(spacing) != 2 or header.rows <= 0 or header.columns <= 0 or image_size <= 0:
        return None
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        return None
    scale = max(header.rows, header.columns) / image_size
    return (float(spacing[0]) * scale, float(spacing[1]) * scale)


def to_native_grid(plane: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """An (S, S) map on the model-input grid → (rows, columns) float32 on the source image's pixels.

    The inverse of :func:`preprocess_image`'s geometry (pad to a centred square of the longer side, resample to
    S): resample the map to that square (bilinear; box filter when it shrinks), then cut the image out of the
    padding. What ``fedrad-site infer`` puts a predicted mask or a saliency map back onto the source image with.
    """
    side = max(rows, columns)
    full = np.asarray(
        Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F").resize(
            (side, side), Image.Resampling.BILINEAR if side >= plane.shape[0] else Image.Resampling.BOX
        ),
        dtype=np.float32,
    )
    top, left = (side - rows) // 2, (side - columns) // 2
    return np.ascontiguousarray(full[top : top + rows, left : left + columns])


@dataclass(frozen=True)
class Planar:
    """The :class:`~shared.imaging.modality.Modality` of projection radiographs."""

    name: str = NAME
    rank: int = RANK
    reasons: frozenset[Reason] = REASONS

    def check(self, ds: pydicom.Dataset, header: ImageHeader) -> None:
        check(ds, header)

    def decode(self, ds: pydicom.Dataset, header: ImageHeader) -> DecodedImage:
        return decode(ds, header)

    def preprocess(self, decoded: DecodedImage, params: PreprocessConfig) -> np.ndarray:
        return preprocess_image(decoded, params)


PLANAR = Planar()
