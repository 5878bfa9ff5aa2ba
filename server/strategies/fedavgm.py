"""FedAvgM (Hsu et al. 2019): FedAvg with a server-side SGD step and momentum on the averaged update.

Flower's FedAvgM. Stateful: the momentum vector is saved with every round
(``strategy-state.pt``) so a resumed run continues it. BatchNorm running
statistics bypass the step (policy ``average``): a step larger than the update
could make a variance negative.

Momentum defaults to 0.5, not the paper's 0.9: FedRad's sites train with Adam,
and on the synthetic cohort (moderate shift, 5 seeds, 20 rounds) 0.9 scored
below plain FedAvg while 0.5 scored above it (README, issue 5 figures).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM

from server.strategies.common import SERVER_STEP_PARAMS, StrategySpec, check_server_step, flower_kwargs

SPEC = StrategySpec(name="fedavgm", params={"server_learning_rate": (float, 1.0), "server_momentum": (float, 0.5)},
                    bn_policy="average")  # fmt: skip


def build(params: dict, min_sites: int) -> FedAvgM:
    check_server_step(params)
    return FedAvgM(**flower_kwargs(min_sites), **{k: params[k] for k in SERVER_STEP_PARAMS})
