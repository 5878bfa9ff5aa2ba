"""FedTrimmedAvg: coordinate-wise mean after cutting the ``beta`` fraction at both ends.

With fewer than 1/beta sites nothing is cut (it is then a plain unweighted
mean). BN running statistics are trimmed-averaged too; the counter takes the max.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedTrimmedAvg

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="fedtrimmedavg", params={"beta": (float, 0.2)}, bn_policy="strategy")


def build(params: dict, min_sites: int) -> FedTrimmedAvg:
    if not 0.0 <= params["beta"] < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {params['beta']}")
    return FedTrimmedAvg(**flower_kwargs(min_sites), beta=params["beta"])
