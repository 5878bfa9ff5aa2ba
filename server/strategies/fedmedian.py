"""FedMedian: coordinate-wise median of the sites' weights (robust to one outlying site).

BN running statistics take the median too (a median of variances is a
variance); the batch counter takes the max.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="fedmedian", params={}, bn_policy="strategy")


def build(params: dict, min_sites: int) -> FedMedian:
    return FedMedian(**flower_kwargs(min_sites))
