"""Krum: the global model becomes the one site update closest to its neighbours (Blanchard et al. 2017).

Tolerates ``num_malicious_nodes`` arbitrary updates when there are more than
2·f + 2 sites. The selected site's BN running statistics come with its
weights (they belong together); the counter takes the max.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Krum

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="krum", params={"num_malicious_nodes": (int, 0)}, bn_policy="strategy")


def build(params: dict, min_sites: int) -> Krum:
    if params["num_malicious_nodes"] < 0:
        raise ValueError("num_malicious_nodes must be >= 0")
    return Krum(**flower_kwargs(min_sites), num_malicious_nodes=params["num_malicious_nodes"])
