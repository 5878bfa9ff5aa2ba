"""FedAvg: weighted mean of the sites' weights by example count (BN running stats too; counter by max)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="fedavg", params={}, bn_policy="strategy")


def build(params: dict, min_sites: int) -> FedAvg:
    return FedAvg(**flower_kwargs(min_sites))
