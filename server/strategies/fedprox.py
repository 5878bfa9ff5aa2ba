"""FedProx: FedAvg on the server; the proximal term mu/2·||w − w_global||² is added by each site.

Flower's FedProx puts ``proximal-mu`` into every train message's config; the
ClientApp passes it to ``shared.training.TrainConfig.proximal_mu``.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="fedprox", params={"proximal_mu": (float, 0.01)}, bn_policy="strategy")


def build(params: dict, min_sites: int) -> FedProx:
    if params["proximal_mu"] <= 0:
        raise ValueError("proximal_mu must be > 0 (0 is plain FedAvg: use strategy fedavg)")
    return FedProx(**flower_kwargs(min_sites), proximal_mu=params["proximal_mu"])
