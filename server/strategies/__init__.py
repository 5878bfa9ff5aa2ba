"""Federated strategies by name: one module per factory, wrapped by :class:`FedRadStrategy`.

``build_strategy("fedadam", '{"eta": 0.01}', model, min_sites=2)`` returns a
strategy whose round methods validate replies, apply the strategy's BatchNorm
policy (see :mod:`server.strategies.bn_policy`) and expose resumable state.
"""

from __future__ import annotations

import json
from types import ModuleType

from torch import nn

from server.strategies import fedadam, fedavg, fedavgm, fedbn, fedmedian, fedprox, fedtrimmedavg, fedyogi, krum
from server.strategies.base import EvalOutcome, FedRadStrategy, TrainOutcome
from server.strategies.bn_policy import NormKeys
from server.strategies.common import StrategyError, StrategySpec, parse_params
from server.strategies.validation import template_of

_MODULES: tuple[ModuleType, ...] = (fedavg, fedprox, fedadam, fedyogi, fedavgm, fedmedian, fedtrimmedavg, krum, fedbn)
STRATEGIES: dict[str, ModuleType] = {m.SPEC.name: m for m in _MODULES}

__all__ = [
    "STRATEGIES",
    "EvalOutcome",
    "FedRadStrategy",
    "StrategyError",
    "StrategySpec",
    "TrainOutcome",
    "build_strategy",
    "parse_strategy_params",
]


def parse_strategy_params(name: str, params: str | dict | None) -> dict:
    """Validate ``name`` and its parameters (a JSON object string or a dict); defaults filled in."""
    module = STRATEGIES.get(str(name).strip().lower())
    if module is None:
        raise StrategyError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if params is None or params == "":
        raw: object = {}
    elif isinstance(params, str):
        try:
            raw = json.loads(params)
        except json.JSONDecodeError as exc:
            raise StrategyError(f"strategy-params is not valid JSON ({exc.msg}): {params!r}") from None
    else:
        raw = dict(params)
    if not isinstance(raw, dict):
        raise StrategyError(f"strategy-params must be a JSON object like '{{\"eta\": 0.01}}', got {params!r}")
    return parse_params(module.SPEC, raw)


def build_strategy(name: str, params: str | dict | None, model: nn.Module, *, min_sites: int) -> FedRadStrategy:
    """The named strategy for ``model`` (its state dict is the reply template)."""
    parsed = parse_strategy_params(name, params)
    module = STRATEGIES[str(name).strip().lower()]
    min_replies = parsed.pop("min_replies")
    max_update_ratio, max_update_norm = parsed.pop("max_update_ratio"), parsed.pop("max_update_norm")
    if max_update_ratio < 0 or max_update_norm < 0 or 0 < max_update_ratio <= 1:
        raise StrategyError(
            f"strategy {module.SPEC.name!r}: max_update_ratio must be 0 (off) or > 1 and max_update_norm >= 0 (0 = off)"
        )
    if min_replies < 1:
        raise StrategyError(f"strategy {module.SPEC.name!r}: min_replies must be at least 1")
    try:
        inner = module.build(parsed, max(1, int(min_sites)))
    except ValueError as exc:
        raise StrategyError(f"strategy {module.SPEC.name!r}: {exc}") from None
    return FedRadStrategy(
        module.SPEC.name,
        inner,
        bn_policy=module.SPEC.bn_policy,
        template=template_of(model.state_dict()),
        norm_keys=NormKeys.of(model),
        min_replies=min_replies,
        max_update_ratio=max_update_ratio,
        max_update_norm=max_update_norm,
    )
