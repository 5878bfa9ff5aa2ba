"""Client-side clipping for central DP: the site bounds its update's L2 norm before it leaves.

The server's noise (``server/strategies/dp.py``) is calibrated to the
clipping norm it sends in the train config (``clipping_norm``, Flower's key).
The update is ``new − received`` over the arrays :func:`shared.dp_rules.dp_covered`
names; Flower's ``compute_clip_model_update`` scales it to at most that norm.
Runs in the per-message ClientApp (numpy only).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

from shared.dp_rules import dp_covered


def clip_update(
    received: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], clipping_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """(weights with the covered update clipped to ``clipping_norm``, the update's norm before clipping)."""
    keys = dp_covered(new)
    updated = [np.array(new[k], dtype=np.float64) for k in keys]
    base = [np.asarray(received[k], dtype=np.float64) for k in keys]
    norm = float(get_norm([u - b for u, b in zip(updated, base, strict=True)]))
    compute_clip_model_update(updated, base, clipping_norm)
    out = dict(new)
    for k, value in zip(keys, updated, strict=True):
        out[k] = value.astype(np.asarray(new[k]).dtype)
    return out, norm
