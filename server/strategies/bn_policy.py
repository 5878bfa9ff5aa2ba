"""What happens to normalisation-layer state (BatchNorm running statistics) in each strategy.

Why a policy at all: Flower strategies treat every array as a trainable
parameter, but BatchNorm's ``running_mean``/``running_var`` are *statistics*
of a site's data and ``num_batches_tracked`` is an integer counter. Pushed
through a server optimizer (FedAdam/FedYogi take a signed step of about
``eta`` per coordinate) a variance can turn negative, and averaging a counter
makes it a float. FedRad therefore decides explicitly, per strategy:

=================  ==========================================  ===================================
policy             running_mean / running_var                  num_batches_tracked
=================  ==========================================  ===================================
``strategy``       aggregated by the strategy itself (FedAvg,   max over the accepted replies
                   FedProx: weighted mean by examples;
                   FedMedian: coordinate median; FedTrimmedAvg:
                   trimmed mean; Krum: the selected site's) —
                   all of these keep a variance positive
``average``        weighted mean by examples, outside the       max over the accepted replies
                   server optimizer (FedAdam, FedYogi); BN
                   weight/bias still go through the optimizer
``local``          FedBN: every normalisation tensor (weight,   site-local
                   bias, running stats, counter) stays at the
                   site, which ignores the server's copy. The
                   server still averages the statistics
                   (weighted by examples, outside any server
                   optimizer: FedBN may use server momentum)
                   for the *exported* global model, the
                   starting point for a site that never
                   trained (it has no local BN of its own)
=================  ==========================================  ===================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from shared.models import norm_layer_names

POLICIES = ("strategy", "average", "local")


@dataclass(frozen=True)
class NormKeys:
    """State-dict keys of a model's normalisation layers, by role."""

    all: frozenset[str]  # every norm-layer key (FedBN keeps these local)
    stats: frozenset[str]  # running_mean / running_var (buffers that are statistics)
    counters: frozenset[str]  # num_batches_tracked

    @classmethod
    def of(cls, model: nn.Module) -> NormKeys:
        norm = norm_layer_names(model)
        params = {name for name, _ in model.named_parameters()}
        counters = {k for k in norm if k.endswith("num_batches_tracked")}
        stats = {k for k in norm if k not in params and k not in counters}
        return cls(frozenset(norm), frozenset(stats), frozenset(counters))


def held_out_keys(policy: str, keys: NormKeys) -> frozenset[str]:
    """Keys the server merges itself instead of passing them to the Flower strategy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown BN policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy in ("average", "local"):
        return keys.stats | keys.counters
    return keys.counters  # "strategy": counters only (never averaged)


def merge_held(
    held: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], keys: NormKeys
) -> dict[str, np.ndarray]:
    """Combine the held-out tensors of the accepted replies: counters by max, statistics by weighted mean."""
    if not held:
        return {}
    total = float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for key in held[0]:
        values = [h[key] for h in held]
        if key in keys.counters:
            out[key] = np.max(np.stack(values), axis=0).astype(values[0].dtype)
        else:
            acc = sum(np.asarray(v, dtype=np.float64) * (w / total) for v, w in zip(values, weights))
            out[key] = np.asarray(acc).astype(values[0].dtype)
    return out
