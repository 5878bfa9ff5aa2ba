"""FedRadStrategy: a Flower strategy plus reply validation, the BN policy and resumable state.

The ServerApp's round loop calls only this wrapper. It hands the Flower
strategy nothing but validated replies (with the keys the BN policy handles
itself taken out), casts the aggregate back to the model's dtypes (Flower's
aggregators return float64 for integer counters and FedAdam can return
float64 weights), and refuses a non-finite aggregate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from server.strategies.bn_policy import NormKeys, held_out_keys, merge_held
from server.strategies.krum import min_sites_for
from server.strategies.metrics import aggregate_metrics
from server.strategies.norm_screen import screen, update_norm
from server.strategies.reply_order import in_content_order
from server.strategies.validation import (
    ARRAYS_KEY,
    METRICS_KEY,
    WEIGHT_KEY,
    ArraySpec,
    validate_eval_reply,
    validate_train_reply,
)
from shared.compression import widen
from shared.tasks import TaskSpec

log = logging.getLogger("fedrad.strategy")
# Server optimizer state: the FedOpt family's moments (FedAdam, FedYogi: dicts by key) and FedAvgM's momentum
# (a list in the order of the keys it aggregates, saved by position).
STATEFUL_ATTRS = ("m_t", "v_t", "momentum_vector")
POSITIONAL_STATE = ("momentum_vector",)  # lists: saved as {"0000": …, "0001": …}, restored in that order


@dataclass
class TrainOutcome:
    """What one training wave produced."""

    arrays: ArrayRecord | None  # None: too few valid replies, the global model is unchanged
    metrics: dict = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)  # node ids
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (node id, reason)
    # node id -> each accepted site's own aggregate metrics, as its validated reply carried them (the coordinator's
    # per-site curves; nothing beyond what the site already sent)
    site_metrics: dict[int, dict] = field(default_factory=dict)


@dataclass
class EvalOutcome:
    metrics: dict | None
    accepted: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    site_metrics: dict[int, dict] = field(default_factory=dict)  # node id -> its own evaluation metrics


class FedRadStrategy:
    """A ``flwr.serverapp.strategy`` strategy made safe for FedRad's round loop."""

    def __init__(
        self,
        name: str,
        inner,  # noqa: ANN001 - any flwr.serverapp.strategy.Strategy
        *,
        bn_policy: str,
        template: Mapping[str, ArraySpec],
        norm_keys: NormKeys,
        min_replies: int = 1,
        max_update_ratio: float = 0.0,
        max_update_norm: float = 0.0,
    ) -> None:
        self.name = name
        self.inner = inner
        self.bn_policy = bn_policy
        self.template = dict(template)
        self.norm_keys = norm_keys
        self.held = held_out_keys(bn_policy, norm_keys)
        self.min_replies = max(1, int(min_replies))
        self.max_update_ratio, self.max_update_norm = float(max_update_ratio), float(max_update_norm)
        self._sent: dict[str, np.ndarray] | None = None  # the weights this round's training started from
        self.uniform_weight_key: str | None = None  # set under DP (server/strategies/dp.py): equal site weights
        self.dp = None  # DpSettings under DP
        self.required_train_metrics: tuple[
            str, ...
        ] = ()  # per-image DP: ("dp-epsilon",), a reply without it is rejected
        self.task: TaskSpec | None = None  # the run's task: which evaluation metric keys a reply may carry

    def set_bn_policy(self, policy: str) -> None:
        """Change the BatchNorm policy (DP needs ``average``: no noise on statistics)."""
        self.bn_policy, self.held = policy, held_out_keys(policy, self.norm_keys)

    @property
    def keep_local_norm(self) -> bool:
        return self.bn_policy == "local"

    # ------------------------------------------------------------ configure
    def _set_available(self, available: int) -> None:
        """Let Flower sample exactly the connected sites (its own wait has no timeout)."""
        n = max(1, int(available))
        flower = getattr(self.inner, "strategy", self.inner)  # a DP wrapper holds the strategy that samples
        for attr in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
            if hasattr(flower, attr):
                setattr(flower, attr, n)
        if hasattr(self.inner, "num_sampled_clients"):  # DP: the noise is calibrated to the sites asked
            self.inner.num_sampled_clients = n

    def configure_train(self, rnd: int, arrays: ArrayRecord, config: Mapping, grid, available: int) -> list[Message]:  # noqa: ANN001
        self._set_available(available)
        screened = [
            k
            for k, spec in self.template.items()
            if np.dtype(spec.dtype).kind == "f" and k not in self.held and k not in self.norm_keys.stats
        ]
        self._sent = {k: arrays[k].numpy().astype(np.float64) for k in screened if k in arrays}
        cfg = ConfigRecord(
            {**dict(config), "proximal-mu": 0.0, "keep-local-norm": self.keep_local_norm, "strategy": self.name}
        )
        msgs = list(self.inner.configure_train(rnd, arrays, cfg, grid))  # FedProx overwrites proximal-mu
        current = getattr(self.inner, "current_arrays", None)
        # FedOpt and FedAvgM step from what was sent; they only ever see the non-held keys. FedAvgM would keep its
        # own float64 copy from round 1 on: it gets the model sent instead, so a resumed run steps from the same one.
        if isinstance(current, dict):
            self.inner.current_arrays = {k: v for k, v in current.items() if k not in self.held}
        elif isinstance(current, ArrayRecord):
            self.inner.current_arrays = ArrayRecord({k: arrays[k] for k in arrays.keys() if k not in self.held})
        return msgs

    def configure_evaluate(self, rnd: int, arrays: ArrayRecord, config: Mapping, grid, available: int) -> list[Message]:  # noqa: ANN001
        self._set_available(available)
        cfg = ConfigRecord({**dict(config), "keep-local-norm": self.keep_local_norm, "strategy": self.name})
        return list(self.inner.configure_evaluate(rnd, arrays, cfg, grid))

    # ------------------------------------------------------------ aggregate
    def aggregate_train(self, rnd: int, replies: Iterable[Message]) -> TrainOutcome:
        """Validate, aggregate with the Flower strategy, merge the BN-policy keys, cast to the model dtypes."""
        out = TrainOutcome(arrays=None)
        clean: list[Message] = []
        held: list[dict[str, np.ndarray]] = []
        weights: list[float] = []
        valid = list(
            _triage(
                map(self._widened, replies),
                lambda c: validate_train_reply(c, self.template, self.required_train_metrics),
                out.rejected,
            )
        )
        valid = in_content_order(valid, lambda v: v[0])  # arrival order must not change the float sums
        if self._sent and (self.max_update_ratio > 0 or self.max_update_norm > 0):
            norms = [
                update_norm({k: m.content[ARRAYS_KEY][k].numpy() for k in self._sent}, self._sent) for m, _, _ in valid
            ]
            reasons = screen(norms, self.max_update_ratio, self.max_update_norm)
            out.rejected += [(node, why) for (_, node, _), why in zip(valid, reasons, strict=True) if why]
            valid = [v for v, why in zip(valid, reasons, strict=True) if not why]
        for msg, node, metrics in valid:
            record = msg.content[ARRAYS_KEY]
            held.append({k: record[k].numpy() for k in self.held})
            kept = ArrayRecord({k: record[k] for k in self.template if k not in self.held})
            weighting = {self.uniform_weight_key: 1.0} if self.uniform_weight_key else {}
            content = RecordDict({ARRAYS_KEY: kept, METRICS_KEY: MetricRecord({**metrics, **weighting})})
            clean.append(Message(content=content, metadata=msg.metadata))
            weights.append(float(metrics[WEIGHT_KEY]))
            out.accepted.append(node)
            out.site_metrics[node] = dict(metrics)
        out.accepted.sort()
        for node, reason in out.rejected:
            log.warning("round %d: reply from node %d rejected: %s", rnd, node, reason)
        if len(clean) < self.min_replies:
            return out
        metrics = aggregate_metrics([m.content for m in clean])  # every key over the sites that sent it
        metrics.pop(self.uniform_weight_key or "", None)
        _same_keys(clean)
        self._warn_if_krum_is_unprotected(rnd, len(clean))
        arrays, _ = self.inner.aggregate_train(rnd, clean)
        if arrays is None:
            return out
        merged = {k: arrays[k].numpy() for k in arrays.keys()}
        merged.update(merge_held(held, weights, self.norm_keys))
        final: dict[str, Array] = {}
        for key, spec in self.template.items():
            value = np.array(merged[key], dtype=spec.dtype, order="C")  # (ascontiguousarray makes 0-d 1-d)
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ArithmeticError(f"round {rnd}: strategy {self.name} produced NaN/Inf in {key!r}")
            final[key] = Array(value)
        out.arrays = ArrayRecord(final)
        out.metrics = dict(metrics or {})
        return out

    def _warn_if_krum_is_unprotected(self, rnd: int, replies: int) -> None:
        """Krum below 2f + 3 replies picks between tied honest and hostile scores: say so (it still aggregates)."""
        f = getattr(getattr(self.inner, "strategy", self.inner), "num_malicious_nodes", None)
        if f is not None and replies < min_sites_for(f):
            log.warning(
                "round %d: %s with num_malicious_nodes %d needs at least %d valid updates (n ≥ 2f + 3), got %d: "
                "the update it selects is not protected against a hostile site",
                rnd,
                self.name,
                f,
                min_sites_for(f),
                replies,
            )

    def _widened(self, msg: Message) -> Message:
        """A reply whose float16 arrays (``compression: fp16``) are widened back to the model's float32."""
        if not msg.has_content() or ARRAYS_KEY not in msg.content.array_records:
            return msg
        record = msg.content[ARRAYS_KEY]
        if not any(record[k].dtype == "float16" for k in record.keys()):  # uncompressed: nothing to deserialise
            return msg
        wide = widen({k: record[k].numpy() for k in record.keys()}, {k: s.dtype for k, s in self.template.items()})
        if wide is not None:
            msg.content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in wide.items()})
        return msg

    def aggregate_evaluate(self, rnd: int, replies: Iterable[Message]) -> EvalOutcome:
        out = EvalOutcome(metrics=None)
        clean: list[Message] = []
        for msg, node, metrics in in_content_order(
            _triage(replies, lambda c: validate_eval_reply(c, self.task), out.rejected), lambda v: v[0]
        ):
            clean.append(Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), metadata=msg.metadata))
            out.accepted.append(node)
            out.site_metrics[node] = dict(metrics)
        out.accepted.sort()
        for node, reason in out.rejected:
            log.warning("round %d: evaluation from node %d rejected: %s", rnd, node, reason)
        if clean:
            out.metrics = dict(aggregate_metrics([m.content for m in clean]))  # every key over the sites that sent it
        return out

    # ------------------------------------------------------------ resumable state
    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Server-side optimizer state to checkpoint (empty for stateless strategies)."""
        state = {}
        for attr in STATEFUL_ATTRS:
            value = getattr(self.inner, attr, None)
            if attr in POSITIONAL_STATE and isinstance(value, list):
                value = {f"{i:04d}": v for i, v in enumerate(value)}
            if isinstance(value, dict) and value:
                state[attr] = {k: np.asarray(v) for k, v in value.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues the same optimizer)."""
        for attr, value in state.items():
            if attr not in STATEFUL_ATTRS or not hasattr(self.inner, attr):
                raise ValueError(
                    f"strategy {self.name!r} has no state {attr!r}; the run folder was made by another strategy"
                )
            restored = {k: np.asarray(v) for k, v in value.items()}
            setattr(self.inner, attr, [restored[k] for k in sorted(restored)] if attr in POSITIONAL_STATE else restored)


def _triage(
    replies: Iterable[Message],
    validate: Callable[[RecordDict], tuple[dict, str | None]],
    rejected: list[tuple[int, str]],
) -> Iterator[tuple[Message, int, dict]]:
    """Yield (reply, node, metrics) for valid replies; append (node, reason) to ``rejected`` for the rest."""
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            rejected.append((node, f"site error: {msg.error.reason}"))
        elif not msg.has_content():
            rejected.append((node, "empty reply"))
        else:
            metrics, problem = validate(msg.content)
            if problem:
                rejected.append((node, problem))
            else:
                yield msg, node, metrics


def _same_keys(messages: list[Message]) -> None:
    """Give every reply the metric keys all of them have (Flower refuses differing key sets)."""
    common = set.intersection(*(set(m.content[METRICS_KEY].keys()) for m in messages))
    for m in messages:
        record = m.content[METRICS_KEY]
        m.content[METRICS_KEY] = MetricRecord({k: record[k] for k in record.keys() if k in common})
