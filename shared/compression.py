"""Smaller site uploads: the trained weights sent as float16 instead of float32.

Used at the site after the outbound guard (what the guard approved is what is
compressed, and the audit log records the bytes that actually leave) and at
the server before reply validation (float16 arrays are widened back to the
model's float32, exactly). An array that does not fit float16 (|x| > 65504)
goes as float32: compression never turns a weight into Inf. Integer arrays
(BatchNorm counters) are left alone.

Why only float16 and not int8: float16 halves the upload at no measurable
quality cost (benchmarks/bench_compression.py), needs no side information,
and keeps each array's name, shape and meaning, so the outbound guard and the
server's validation stay simple. int8 would need per-array scales as extra
records.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MODES = ("none", "fp16")
_FP16_MAX = float(np.finfo(np.float16).max)


def check_mode(mode: str) -> str:
    """``mode`` normalised, or ValueError naming the choices."""
    m = str(mode or "none").strip().lower()
    if m not in MODES:
        raise ValueError(f"compression must be one of {', '.join(MODES)}, got {mode!r}")
    return m


def compress(arrays: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """The arrays as they will be sent under ``mode``."""
    if check_mode(mode) == "none":
        return dict(arrays)
    out = {}
    for name, a in arrays.items():
        fits = a.dtype == np.float32 and (a.size == 0 or float(np.abs(a).max()) <= _FP16_MAX)
        out[name] = a.astype(np.float16) if fits else a
    return out


def widen(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str]) -> dict[str, np.ndarray] | None:
    """float16 arrays back to the model's float32 (exact); None when nothing was compressed."""
    if not any(a.dtype == np.float16 and dtypes.get(k) == "float32" for k, a in arrays.items()):
        return None
    return {
        k: a.astype(np.float32) if a.dtype == np.float16 and dtypes.get(k) == "float32" else a
        for k, a in arrays.items()
    }
