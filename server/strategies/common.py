"""Pieces shared by the strategy factories: parameter specs and the Flower keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.strategies.metrics import aggregate_metrics


class StrategyError(ValueError):
    """A strategy name or parameter the coordinator must fix; the message names it."""


@dataclass(frozen=True)
class StrategySpec:
    """A strategy's name, its parameters ``{name: (type, default)}`` and its BN policy."""

    name: str
    params: dict[str, tuple[type, object]] = field(default_factory=dict)
    bn_policy: str = "strategy"


# Accepted by every strategy: the fewest valid training replies a round may aggregate, and the update-norm
# screen (server/strategies/norm_screen.py): a reply whose update (weights minus the global model sent) is longer
# than max_update_ratio × the round's median update (with 3+ replies), or than max_update_norm, is rejected.
# 0 turns either off.
COMMON_PARAMS: dict[str, tuple[type, object]] = {
    "min_replies": (int, 1),
    "max_update_ratio": (float, 10.0),
    "max_update_norm": (float, 0.0),
}


def flower_kwargs(min_sites: int) -> dict:
    """Every connected site trains and evaluates each round; metrics use FedRad's aggregation."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites,
        "min_evaluate_nodes": min_sites,
        "min_available_nodes": min_sites,
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }


def parse_params(spec: StrategySpec, raw: dict) -> dict:
    """Typed parameters with defaults filled in; unknown keys and wrong types are a StrategyError."""
    allowed = {**spec.params, **COMMON_PARAMS}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "(none)"
        raise StrategyError(f"strategy {spec.name!r}: unknown parameter(s) {unknown}; known: {known}")
    out = {}
    for key, (typ, default) in allowed.items():
        value = raw.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (typ is int and not float(value).is_integer())
        ):
            raise StrategyError(f"strategy {spec.name!r}: parameter {key!r} must be {typ.__name__}, got {value!r}")
        out[key] = typ(value)
    return out
