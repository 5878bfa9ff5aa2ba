"""SecAgg+ at the site: Flower's ``secaggplus_mod`` around FedRad's guarded training step.

A secure round is four ``train`` messages that carry a
``secaggplus_configs`` record (the server side is
:mod:`server.secure_aggregation`):

1. **setup**: the site makes two key pairs and sends its public keys;
2. **share-keys**: it secret-shares its private mask seed and key among its
   neighbours, encrypted to each, and sends the ciphertexts;
3. **collect-masked-vectors**: it trains (the usual guarded step: warm
   worker or in-process, DP clipping, outbound guard), turns the new weights
   into an update (new − global; integer counters send 0), and sends it
   quantised and masked: int64, the server cannot read it alone;
4. **unmask**: it sends the shares the server needs to remove the masks of
   the *sum*.

The protocol's state (private keys, shares) lives in the run's Flower
``Context`` at this SuperNode and never leaves. Every outgoing stage passes
:func:`guard_secure_reply`, which lets through only the protocol's own
fields, and is written to the audit log like any reply.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat

ARRAY_NAMES_KEY = "array-names"  # same as server.secure_aggregation.ARRAY_NAMES_KEY (client never imports server)
FITRES_RECORDS = {"fitres.metrics", "fitres.num_examples", "fitres.status", "fitres.parameters"}
# What each stage may send, besides the stage-2 FitRes bookkeeping: field → element type.
STAGE_FIELDS: dict[str, dict[str, type]] = {
    Stage.SETUP: {Key.PUBLIC_KEY_1: bytes, Key.PUBLIC_KEY_2: bytes},
    Stage.SHARE_KEYS: {Key.DESTINATION_LIST: int, Key.CIPHERTEXT_LIST: bytes},
    Stage.COLLECT_MASKED_VECTORS: {Key.MASKED_PARAMETERS: bytes},
    Stage.UNMASK: {Key.NODE_ID_LIST: int, Key.SHARE_LIST: bytes},
}
# Under DP every site weighs max_weight / 64: update values up to ±64 × clipping_range, quantised to ~3e-5 ×
# clipping_range. The room is for the BatchNorm statistics, which DP does not clip and which move a lot
# once the global model carries noise (running_var changed by 24 in round 2 of bench_secagg at ε≈10).
DP_WEIGHT_FRACTION = 1 / 64
TrainStep = Callable[[dict, dict[str, np.ndarray]], tuple[dict[str, np.ndarray] | None, dict]]


class SecureAggregationError(RuntimeError):
    """This site cannot take part in the secure round; the message says why."""


def secure_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a ``train`` message asks for, or None for a plain round."""
    record = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if record is None else str(record.get(Key.STAGE, "?"))


def round_config(msg: Message) -> dict:
    """The round's training config (stage 2 only; the other stages carry protocol fields alone)."""
    record = msg.content.config_records.get("fitins.config")
    return dict(record) if record is not None else {}


def run_secure_stage(msg: Message, context: Context, train: TrainStep) -> Message:
    """One SecAgg+ stage through Flower's mod; at stage 2 ``train`` does the guarded local training."""

    def call_next(inner: Message, ctx: Context) -> Message:
        config = round_config(inner)
        names = json.loads(str(config.pop(ARRAY_NAMES_KEY, "[]")))
        sent = compat.arrayrecord_to_parameters(inner.content.array_records["fitins.parameters"], keep_input=True)
        start = parameters_to_ndarrays(sent)
        if len(names) != len(start):
            raise SecureAggregationError(f"round config names {len(names)} arrays, the message carries {len(start)}")
        arrays = dict(zip(names, start, strict=True))
        new, metrics = train(config, arrays)
        if new is None:
            raise SecureAggregationError("the outbound guard withheld this site's weights")
        update = [new[k] - v if np.issubdtype(v.dtype, np.floating) else np.zeros_like(v) for k, v in arrays.items()]
        weight = int(metrics["num-examples"])
        if "clipping_norm" in config:  # DP: equal site weights; the BN statistics (not clipped) need room
            weight = max(1, int(float(ctx.state.config_records[RECORD_KEY_STATE]["max_weight"]) * DP_WEIGHT_FRACTION))
        _check_range(update, weight, ctx)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), weight, metrics)
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=inner)

    return secaggplus_mod(msg, context, call_next)


def _check_range(update: list[np.ndarray], weight: int, context: Context) -> None:
    """Refuse an update SecAgg would silently clip: it scales by ``weight / max_weight``, then clips to ±range."""
    state = context.state.config_records[RECORD_KEY_STATE]
    limit, max_weight = float(state["clipping_range"]), float(state["max_weight"])
    peak = max((float(np.abs(u).max()) for u in update if u.size), default=0.0) * weight / max_weight
    if peak > limit:
        raise SecureAggregationError(
            f"update value {peak:.4g} (scaled by {weight} examples / max_weight {max_weight:g}) exceeds SecAgg's "
            f"clipping range ±{limit:g}; raise privacy.secure_aggregation.clipping_range in consortium.yaml"
        )


def guard_secure_reply(stage: str, content: RecordDict, n_arrays: int | None) -> list[str]:
    """Check a stage's reply content holds only the protocol's fields; return the problems (empty: it may leave).

    Unlike a plain reply nothing is dropped piecemeal: a protocol message
    with a stray field is not sent at all.
    """
    problems: list[str] = []
    allowed = STAGE_FIELDS.get(stage)
    if allowed is None:
        return [f"unknown SecAgg+ stage {stage!r}"]
    for name, record in content.array_records.items():
        if name != "fitres.parameters" or len(record):
            problems.append(f"array record {name!r} must not leave in a secure round")
    extra = set(content.config_records) | set(content.metric_records)
    extra -= {RECORD_KEY_CONFIGS} | (FITRES_RECORDS if stage == Stage.COLLECT_MASKED_VECTORS else set())
    problems += [f"record {name!r} is not part of stage {stage}" for name in sorted(extra)]
    fields = content.config_records.get(RECORD_KEY_CONFIGS, {})
    for key, value in fields.items():
        kind = allowed.get(key)
        values = value if isinstance(value, list) else [value]
        if kind is None or not all(type(v) is kind for v in values):
            problems.append(f"field {key!r} is not a {stage} field of type {kind.__name__ if kind else '-'}")
    if stage == Stage.COLLECT_MASKED_VECTORS and n_arrays is not None:
        vectors = list(fields.get(Key.MASKED_PARAMETERS, []))
        if len(vectors) != n_arrays + 1:  # the weight factor, then one vector per model array
            problems.append(f"{len(vectors)} masked vectors for a model of {n_arrays} arrays")
        elif any(np.load(io.BytesIO(v), allow_pickle=False).dtype.kind not in "iu" for v in vectors):
            problems.append("masked vectors must be integer arrays")
    return problems


def stage_digest(msg: Message) -> tuple[int, dict[str, Any]]:
    """(bytes, sha256 per field) of a stage reply's protocol fields, for the audit log."""
    import hashlib

    fields = msg.content.config_records.get(RECORD_KEY_CONFIGS, {})
    size, digests = 0, {}
    for key, value in fields.items():
        items = value if isinstance(value, list) else [value]
        blobs = [v for v in items if isinstance(v, bytes)]
        size += sum(len(b) for b in blobs)
        if blobs:
            digests[key] = [hashlib.sha256(b).hexdigest() for b in blobs]
    return size, digests
