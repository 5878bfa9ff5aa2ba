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

from shared.tasks.segmentation.metric_keys import is_fraction, is_segmentation_key

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
WEIGHT_KEY = "num-examples"
# Sites withhold loss/accuracy/AUC computed over fewer than their min_count cases (client/outbound_guard.py),
# so only the example count is required.
TRAIN_REQUIRED = ("num-examples",)
TRAIN_OPTIONAL = ("train-loss", "train-acc", "load-s", "train-s", "startup-s", "handler-s", "warm-worker",
                  "dp-epsilon", "dp-noise-multiplier")  # fmt: skip
EVAL_REQUIRED = ("num-examples",)
EVAL_OPTIONAL = ("loss", "accuracy", "auc", "auc-examples", "auc-ci-low", "auc-ci-high", "held-out", "load-s",
                 "startup-s", "handler-s", "warm-worker")  # fmt: skip


@dataclass(frozen=True)
class ArraySpec:
    """Expected name, shape and dtype of one model tensor."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, as Flower's Array reports it ("float32", "int64")


def template_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, ArraySpec]:
    """The reply template of a model: every state-dict key with its shape and numpy dtype."""
    return {
        k: ArraySpec(tuple(v.shape), str(v.detach().cpu().numpy().dtype)) for k, v in state_dict.items()
    }


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


def validate_train_reply(content: RecordDict, template: Mapping[str, ArraySpec],
                         required: Iterable[str] = ()) -> tuple[dict, str | None]:  # fmt: skip
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
    return clean_metrics(content[METRICS_KEY], (*TRAIN_REQUIRED, *extra), tuple(k for k in TRAIN_OPTIONAL if k not in extra))


def validate_eval_reply(content: RecordDict) -> tuple[dict, str | None]:
    """Return (clean metrics, None) for a usable evaluation reply, or ({}, reason)."""
    problem = _one(content, "MetricRecord", METRICS_KEY)
    if problem:
        return {}, problem
    record = content[METRICS_KEY]
    segmentation = tuple(k for k in record.keys() if is_segmentation_key(k))  # dice-<label>, hd95-<label>, ...
    metrics, problem = clean_metrics(record, EVAL_REQUIRED, EVAL_OPTIONAL + segmentation)
    fractions = ("auc", "accuracy", "auc-ci-low", "auc-ci-high", *(k for k in segmentation if is_fraction(k)))
    out_of_range = [k for k in fractions if k in metrics and not 0.0 <= metrics[k] <= 1.0]
    if problem is None and out_of_range:
        return {}, f"metric(s) {out_of_range} must lie in [0, 1]"
    negative = [k for k in segmentation if k in metrics and metrics[k] < 0]  # HD95 distances and counts
    if problem is None and negative:
        return {}, f"metric(s) {negative} must not be negative"
    return metrics, problem
