"""Krum: the global model becomes the one site update closest to its neighbours (Blanchard et al. 2017).

Tolerates ``num_malicious_nodes`` (f) arbitrary updates only when at least
2·f + 3 sites answer (n ≥ 2f + 3; Flower scores each update by its n − f − 2
nearest neighbours). Below that the scores stop telling honest from hostile:
with 3 sites and f = 1 each update is scored by its single nearest neighbour,
two honest sites score the same, and which one wins depends on reply order
and floating-point noise. f = 0 still needs 3 sites (with 2, both tie).
:func:`sites_problem` refuses such settings (consortium.yaml and the run
config); a round that gets fewer replies than that is logged as unprotected
(server/strategies/base.py). The selected site's BN running statistics come
with its weights (they belong together); the counter takes the max.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Krum

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(name="krum", params={"num_malicious_nodes": (int, 0)}, bn_policy="strategy")


def min_sites_for(num_malicious_nodes: int) -> int:
    """The fewest replies Krum needs to tolerate ``num_malicious_nodes`` hostile ones: 2f + 3."""
    return 2 * int(num_malicious_nodes) + 3


def sites_problem(num_malicious_nodes: int, min_sites: int) -> str | None:
    """Why ``min_sites`` is too few for Krum with ``num_malicious_nodes``, in words; None when it is enough."""
    need = min_sites_for(num_malicious_nodes)
    if min_sites >= need:
        return None
    return (
        f"krum with num_malicious_nodes: {num_malicious_nodes} needs at least {need} sites (n ≥ 2f + 3); "
        f"min_sites is {min_sites}: raise min_sites to {need} or use fedmedian/fedtrimmedavg"
    )


def build(params: dict, min_sites: int) -> Krum:
    if params["num_malicious_nodes"] < 0:
        raise ValueError("num_malicious_nodes must be >= 0")
    problem = sites_problem(params["num_malicious_nodes"], min_sites)
    if problem:
        raise ValueError(problem)
    return Krum(**flower_kwargs(min_sites), num_malicious_nodes=params["num_malicious_nodes"])
