"""FedYogi: Yogi on the server over the averaged update (Reddi et al. 2021); Flower's defaults.

Stateful like FedAdam (moments saved per round); BN running statistics bypass
the optimizer (policy ``average``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(
    name="fedyogi",
    params={"eta": (float, 0.01), "beta_1": (float, 0.9), "beta_2": (float, 0.99), "tau": (float, 1e-3)},
    bn_policy="average",
)


def build(params: dict, min_sites: int) -> FedYogi:
    return FedYogi(**flower_kwargs(min_sites), **params)
