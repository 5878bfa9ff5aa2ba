"""FedAdam: Adam on the server over the averaged update (Reddi et al. 2021).

Stateful: the moments ``m_t``/``v_t`` are saved to ``strategy-state.pt`` after
every round so a resumed run continues the same optimizer trajectory. BN
running statistics bypass the optimizer (policy ``average``). ``eta`` defaults
to 0.01 rather than Flower's 0.1: a signed step of 0.1 per coordinate and
round is larger than most weights of a freshly initialised CNN.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from server.strategies.common import StrategySpec, flower_kwargs

SPEC = StrategySpec(
    name="fedadam",
    params={"eta": (float, 0.01), "beta_1": (float, 0.9), "beta_2": (float, 0.99), "tau": (float, 1e-3)},
    bn_policy="average",
)


def build(params: dict, min_sites: int) -> FedAdam:
    return FedAdam(**flower_kwargs(min_sites), **params)
