"""Check every site reply before it can touch the global model.

A reply that is malformed (wrong array names, shapes or dtypes), numerically
broken (NaN/Inf) or missing its example count is rejected with a reason that
the server logs and records in ``metrics.jsonl``; the round continues with the
other sites. Metric records are reduced to a fixed list of known aggregate
keys, so nothing unexpected a site sends (by mistake) is aggregated or stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from shared.tasks import TaskSpec, get_task, task_names

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
WEIGHT_KEY = "num-examples"
# Sites withhold loss/accuracy/AUC computed over fewer than their min_count cases (client/outbound_guard.py),
# so only the example count is required.
TRAIN_REQUIRED = ("num-examples",)
TRAIN_OPTIONAL = (
    "train-loss",
    "train-acc",
    "load-s",
    "train-s",
    "startup-s",
    "handler-s",
    "warm-worker",
    "dp-epsilon",
    "dp-noise-multiplier",
)
EVAL_REQUIRED = ("num-examples",)
EVAL_OPTIONAL = ("loss", "held-out", "load-s", "startup-s", "handler-s", "warm-worker")  # + the task's own keys


@dataclass(frozen=True)
class ArraySpec:
    """Expected name, shape and dtype of one model tensor."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, as Flower's Array reports it ("float32", "int64")


def template_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, ArraySpec]:
    """The reply template of a model: every state-dict key with its shape and numpy dtype."""
    return {k: ArraySpec(tuple(v.shape), str(v.detach().cpu().numpy().dtype)) for k, v in state_dict.items()}


def _one(content: RecordDict, kind: str, key: str) -> str | None:
    records = content.array_records if kind == "ArrayRecord" else content.metric_records
    if len(records) != 1 or key not in records:
        return f"expected exactly one {kind} named {key!r}, got {sorted(records)}"
    return None


def check_arrays(record: ArrayRecord, template: Mapping[str, ArraySpec]) -> str | None:
    """First problem of ``record`` against ``template`` in words, or None."""
    names = set(record.keys())
    missing, extra = sorted(set(template) - names), sorted(names - set(template))
    if missing or extra:
        return f"array names differ from the model: missing {missing[:5]}, unexpected {extra[:5]}"
    for key, spec in template.items():
        arr = record[key]
        if tuple(arr.shape) != spec.shape:
            return f"array {key!r} has shape {list(arr.shape)}, the model needs {list(spec.shape)}"
        if str(arr.dtype) != spec.dtype:
            return f"array {key!r} has dtype {arr.dtype}, the model needs {spec.dtype}"
    for key in template:
        values = record[key].numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"array {key!r} holds NaN or Inf"
        if key.endswith("running_var") and (values < 0).any():
            return f"array {key!r} (a variance) holds negative values"
    return None


def clean_metrics(record: MetricRecord, required: Iterable[str], optional: Iterable[str]) -> tuple[dict, str | None]:
    """Keep only known keys; every required key must be a finite number and the weight > 0."""
    out: dict[str, float | int] = {}
    for key in required:
        if key not in record:
            return {}, f"metric {key!r} is missing"
    for key in (*required, *optional):
        if key not in record:
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return {}, f"metric {key!r} must be a finite number, got {value!r}"
        out[key] = value
    if not out[WEIGHT_KEY] > 0:
        return {}, f"metric {WEIGHT_KEY!r} must be positive, got {out[WEIGHT_KEY]!r}"
    return out, None


def validate_train_reply(
    content: RecordDict, template: Mapping[str, ArraySpec], required: Iterable[str] = ()
) -> tuple[dict, str | None]:
    """Return (clean metrics, None) for a usable training reply, or ({}, reason).

    ``required``: metrics the run needs on top of the example count (per-image DP: the site's ``dp-epsilon``,
    without which the update is not known to be private).
    """
    problem = _one(content, "ArrayRecord", ARRAYS_KEY) or _one(content, "MetricRecord", METRICS_KEY)
    if problem:
        return {}, problem
    problem = check_arrays(content[ARRAYS_KEY], template)
    if problem:
        return {}, problem
    extra = tuple(required)
    return clean_metrics(
        content[METRICS_KEY], (*TRAIN_REQUIRED, *extra), tuple(k for k in TRAIN_OPTIONAL if k not in extra)
    )


def task_rules(task: TaskSpec | None) -> list[tuple]:
    """(task, its outputs) pairs whose metric keys a reply may carry: the run's task, or without one every
    registered task with any outputs (a reply checked outside a run)."""
    if task is not None:
        return [(task.task, list(task.outputs))]
    return [(get_task(name), None) for name in task_names()]


def validate_eval_reply(content: RecordDict, task: TaskSpec | None = None) -> tuple[dict, str | None]:
    """Return (clean metrics, None) for a usable evaluation reply, or ({}, reason).

    Beyond the common keys, only the task's own metric keys are kept (:meth:`shared.tasks.Task.metric_count_key`),
    each within the task's bounds for it (AUC and Dice in [0, 1], distances and counts >= 0)."""
    problem = _one(content, "MetricRecord", METRICS_KEY)
    if problem:
        return {}, problem
    record = content[METRICS_KEY]
    rules = task_rules(task)
    own = tuple(
        k
        for k in record.keys()
        if k not in EVAL_OPTIONAL
        and k not in EVAL_REQUIRED
        and any(t.metric_count_key(k, outs) is not False for t, outs in rules)
    )
    metrics, problem = clean_metrics(record, EVAL_REQUIRED, EVAL_OPTIONAL + own)
    if problem is not None:
        return metrics, problem
    for key in own:
        bounds = next((b for t, _ in rules if (b := t.metric_bounds(key)) is not None), None)
        if key in metrics and bounds is not None and not bounds[0] <= metrics[key] <= bounds[1]:
            low, high = bounds
            return {}, f"metric(s) ['{key}'] must lie in [{low:g}, {high:g}]" if high < float(
                "inf"
            ) else f"metric(s) ['{key}'] must not be negative"
    return metrics, None
