"""FedBN (Li et al. 2021): FedAvg for everything except normalisation layers, which stay at each site.

The server runs FedAvg over all tensors; the sites are told
``keep-local-norm`` and overwrite the received norm-layer tensors with their
own (kept in the site's work dir between rounds). The server's averaged norm
tensors therefore only matter for the exported global model (a starting
point for a site that never took part).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="fedbn", params={}, bn_policy="local")


def build(params: dict, min_sites: int) -> FedAvg:
    return FedAvg(**flower_kwargs(min_sites))
