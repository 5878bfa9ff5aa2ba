"""Reject training replies whose update is far longer than the others': a broken or hostile site.

A reply can pass :mod:`server.strategies.validation` (right names, shapes,
dtypes, finite) and still wreck the global model: a site whose optimiser
diverged, or one that scales its update by 1000. Plain FedAvg has no defence
against that; the robust strategies (FedMedian, FedTrimmedAvg, Krum) do, but
cost accuracy on honest rounds. This screen runs for every strategy, before
aggregation: the update norm ``||w_site − w_sent||`` over the trainable
float weights (BN running statistics and counters are left out: they move
legitimately with the site's data) is compared with

* ``max_update_ratio`` × the median update norm of the round, when at least 3
  replies came (a relative test needs a majority to compare with), and
* ``max_update_norm``, an absolute cap, when the coordinator set one.

A sign-flipped update has a normal norm and passes; that attack is what the
robust strategies are for (measured in tests/test_hostile_updates.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import numpy as np

MIN_REPLIES_FOR_RATIO = 3


def update_norm(reply: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``reply − sent`` over the keys of ``sent``."""
    total = 0.0
    for key, before in sent.items():
        diff = np.asarray(reply[key], dtype=np.float64) - before
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return float(np.sqrt(total))


def screen(norms: list[float], max_ratio: float, max_norm: float) -> list[str | None]:
    """Per reply: None to keep it, or the reason it is rejected."""
    median = statistics.median(norms) if len(norms) >= MIN_REPLIES_FOR_RATIO else None
    reasons: list[str | None] = []
    for n in norms:
        if max_norm > 0 and n > max_norm:
            reasons.append(f"update norm {n:.3g} exceeds max_update_norm {max_norm:g}")
        elif max_ratio > 0 and median is not None and median > 0 and n > max_ratio * median:
            reasons.append(
                f"update norm {n:.3g} is {n / median:.1f}× the round's median {median:.3g} "
                f"(max_update_ratio {max_ratio:g})"
            )
        else:
            reasons.append(None)
    return reasons
