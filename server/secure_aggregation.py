"""Secure aggregation (SecAgg+) for one training wave: Flower's workflow, fitted to FedRad's round loop.

What it guarantees: the server learns the *sum* of the sites' updates and
nothing about any single one. Each site masks its (quantised) update with
pairwise masks that cancel in the sum and a private mask whose seed is
secret-shared among its neighbours; the server can unmask only the total
(Bonawitz et al. 2017, SecAgg+ variant). Up to ``sites − threshold`` sites
may drop out mid-round and the sum of the others is still recovered.

How: Flower 1.42 ships SecAgg+ only for its legacy strategy interface
(``SecAggPlusWorkflow`` over a ``LegacyContext``; ``secaggplus_mod`` at the
site). :func:`secure_train_wave` runs that workflow for one round with a
minimal legacy strategy (:class:`_OneRound`) that hands out the round's
instructions and keeps the unmasked result, so the rest of FedRad (its round
loop, reply validation, FedProx/FedOpt/FedBN, DP noise, checkpoints) stays
on the Message API. Sites send their **update** (new − global weights), not
their weights: updates are small, so they fit SecAgg's clipping range and
lose less to its quantisation. Integer counters (BatchNorm's
``num_batches_tracked``) keep the global value.

The aggregate is returned as one reply per contributing site, each carrying
the secure mean and that site's own (plaintext, guarded) metrics: FedAvg of
identical arrays is the mean whatever the weights, and Flower's DP wrapper
finds the number of replies it calibrated its noise for.

Cost (``benchmarks/bench_secagg.py``): four message waves instead of one,
and the masked vectors travel as int64 (2× the float32 upload).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

log = logging.getLogger("fedrad.secagg")

# The names of the model's arrays, in the order of the legacy (unnamed) parameter list the sites receive.
ARRAY_NAMES_KEY = "array-names"


@dataclass(frozen=True)
class SecAggSettings:
    """``privacy.secure_aggregation`` in consortium.yaml (see :class:`server.consortium.SecAggConfig`)."""

    share_fraction: float = 1.0  # each site's secrets are split among this fraction of the sites
    threshold_fraction: float = 0.67  # fraction of the shares needed to unmask (privacy vs dropout tolerance)
    # Precision and range both hang on clipping_range × max_weight (C): a site with n examples may send
    # update values up to C / n, quantised to about 2C / (2**22 n); the sum of n / max_weight must stay
    # below 2**32 / 2**22 = 1024. C = 1000: n = 50 → ±20 at 1e-5; n = 1000 → ±1 at 5e-7; up to 1M examples.
    clipping_range: float = 1.0
    max_weight: float = 1000.0

    @classmethod
    def from_json(cls, text: str) -> SecAggSettings | None:
        """The ``secagg`` run-config value: a JSON object of the fields above; ``{}`` or empty = off."""
        data = json.loads(text or "{}")
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise ValueError(f"expected a JSON object with keys among {sorted(cls.__dataclass_fields__)}, got {text!r}")
        return cls(**{k: float(v) for k, v in data.items()}) if data else None

    def workflow(self, timeout: float) -> SecAggPlusWorkflow:
        return SecAggPlusWorkflow(
            self.share_fraction,
            self.threshold_fraction,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            timeout=timeout,
        )


class _NodeProxy(ClientProxy):
    """The workflow addresses sites by ``node_id`` only; the legacy RPCs are never called."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def _unused(self, *_: Any, **__: Any) -> Any:
        raise NotImplementedError("FedRad's secure aggregation sends messages through the Grid only")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


class _OneRound(Strategy):
    """The legacy strategy the workflow calls: this round's instructions out, the unmasked mean in."""

    def __init__(self, node_ids: list[int], config: dict[str, Any]) -> None:
        self.node_ids, self.config = node_ids, config
        self.mean: list[np.ndarray] | None = None
        self.results: list[tuple[int, int, dict]] = []  # (node id, num_examples, metrics)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(_NodeProxy(nid), FitIns(parameters, dict(self.config))) for nid in self.node_ids]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list) -> tuple:
        if results:  # the workflow has put the same unmasked mean into every result
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.results = [(proxy.node_id, res.num_examples, dict(res.metrics)) for proxy, res in results]
        return None, {}

    def initialize_parameters(self, client_manager: Any) -> None:
        return None

    def configure_evaluate(self, *_: Any) -> list:
        return []

    def aggregate_evaluate(self, *_: Any) -> tuple:
        return None, {}

    def evaluate(self, *_: Any) -> None:
        return None


@dataclass
class SecureWave:
    """What one secure training wave produced."""

    replies: list[Message] = field(default_factory=list)  # one per contributing site: secure mean + its metrics
    contributors: list[int] = field(default_factory=list)


def secure_train_wave(
    grid: Grid,
    context: Context,
    rnd: int,
    arrays: ArrayRecord,
    config: dict[str, Any],
    node_ids: list[int],
    settings: SecAggSettings,
    timeout: float,
) -> SecureWave:
    """Run SecAgg+ for round ``rnd`` over ``node_ids``; the sites train on ``arrays`` with ``config``."""
    names = list(arrays.keys())
    global_arrays = [arrays[k].numpy() for k in names]
    one_round = _OneRound(node_ids, {**config, ARRAY_NAMES_KEY: json.dumps(names)})
    legacy = LegacyContext(context, strategy=one_round)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(
        {str(i): Array(a) for i, a in enumerate(global_arrays)}  # the legacy layout: keys "0", "1", ...
    )
    settings.workflow(timeout)(grid, legacy)
    out = SecureWave()
    if one_round.mean is None:
        return out
    if len(one_round.mean) != len(names):
        raise ArithmeticError(f"round {rnd}: secure aggregate has {len(one_round.mean)} arrays, the model {len(names)}")
    model: dict[str, Array] = {}
    for name, start, delta in zip(names, global_arrays, one_round.mean, strict=True):
        if np.issubdtype(start.dtype, np.floating):
            model[name] = Array(np.asarray(start + delta, dtype=start.dtype))
        else:  # integer counters are not averaged through SecAgg: they keep the global value
            model[name] = Array(start)
    for node_id, num_examples, metrics in one_round.results:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric.setdefault("num-examples", num_examples)
        content = RecordDict({"arrays": ArrayRecord(dict(model)), "metrics": MetricRecord(numeric)})
        meta = Metadata(
            run_id=context.run_id,
            message_id="",
            src_node_id=node_id,
            dst_node_id=0,
            reply_to_message_id="",
            group_id=str(rnd),
            created_at=time.time(),
            ttl=0.0,
            message_type="train",
        )
        out.replies.append(Message(content=content, metadata=meta))
        out.contributors.append(node_id)
    return out
