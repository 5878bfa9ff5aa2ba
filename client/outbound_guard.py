"""The one gate every reply passes before it leaves the site: only model weights and aggregate metrics.

What passes:

* **arrays** (train replies only): exactly the arrays the server sent, by
  name, shape and dtype — the model's state dict. The site loaded the
  incoming arrays into the task's model with a strict ``load_state_dict``,
  so "same as incoming" is "same as the task's model". Any extra array is
  dropped; a missing or reshaped one drops all arrays (a partial model is
  no use to anyone, and the server rejects the reply).
* **metrics**: keys from :data:`ALLOWED_METRICS` and the run's task's aggregate keys
  (:meth:`shared.tasks.Task.metric_count_key`: ``auc``, ``accuracy``, …; ``dice-<label>``,
  ``hd95-mm-<label>`` for its segment labels only), finite numbers only.
  Metrics computed from patients (loss, accuracy, AUC) are withheld when
  they cover fewer than ``min_count`` cases (site.yaml ``privacy.min_count``,
  default 10): a figure over three patients says too much about each.
  Counts and timings are not computed from patients' data and always pass.

``query`` replies (data statistics for the coordinator) carry counts under
:data:`STATS_KEY` only, each withheld below ``min_count``.

Everything else (strings, per-case arrays, unknown keys, DICOM-derived text)
is dropped and recorded as a **violation**; the reply still goes out with
what is valid. Decisions are returned for the audit log (:mod:`client.audit`).
This module imports numpy and the light task registry only: it runs in every per-message ClientApp process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.tasks import TaskSpec

DEFAULT_MIN_COUNT = 10
# metric → the count key that says how many cases it was computed over (None: not patient-derived)
ALLOWED_METRICS: dict[str, str | None] = {
    "num-examples": None,
    "held-out": None,
    "warm-worker": None,
    "load-s": None,
    "train-s": None,
    "startup-s": None,
    "handler-s": None,
    "train-loss": "num-examples",
    "loss": "num-examples",
    "dp-epsilon": None,
    "dp-noise-multiplier": None,  # per-image DP: the site's own ledger (client/privacy_ledger.py)
}
# Data-QC statistics (``query`` replies, client/site_stats.py): counts only, each withheld below min_count.
STATS_KEY = re.compile(r"^(images|class:[A-Za-z0-9 ._-]{1,40}|manufacturer:[A-Za-z0-9 ._-]{1,40}|intensity-bin:\d)$")
ArraySpec = tuple[tuple[int, ...], str]  # (shape, numpy dtype name)


@dataclass(frozen=True)
class Decision:
    """What the guard did with one item of a reply."""

    item: str  # "array:<name>", "arrays", "metric:<key>"
    action: str  # "drop" (a violation) or "withhold" (below min_count)
    reason: str


@dataclass
class GuardedReply:
    """A reply as it may leave the site, with the guard's decisions."""

    arrays: dict[str, np.ndarray] | None
    metrics: dict[str, int | float]
    decisions: list[Decision] = field(default_factory=list)

    @property
    def violations(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "drop"]


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    return {k: (tuple(int(x) for x in v.shape), np.asarray(v).dtype.name) for k, v in arrays.items()}


def _guard_arrays(op: str, arrays: Mapping[str, Any] | None, incoming: Mapping[str, ArraySpec], out: list[Decision]):  # noqa: ANN202
    if not arrays:
        return None
    if op not in ("train", "local-model"):  # local-model: a consented crossval reply (client/app.py)
        out.append(Decision("arrays", "drop", f"a {op} reply carries no arrays"))
        return None
    kept: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        value = np.asarray(value) if isinstance(value, np.generic) else value  # a 0-d result may be a numpy scalar
        if name not in incoming:
            out.append(Decision(f"array:{name}", "drop", "not an array of the model the server sent"))
        elif not isinstance(value, np.ndarray) or value.dtype == object:
            out.append(Decision(f"array:{name}", "drop", f"not a numeric array ({type(value).__name__})"))
        elif spec_of({name: value})[name] != incoming[name]:
            shape, dtype = spec_of({name: value})[name]
            out.append(
                Decision(
                    f"array:{name}",
                    "drop",
                    f"shape {list(shape)} {dtype}, the model's is {list(incoming[name][0])} {incoming[name][1]}",
                )
            )
        else:
            kept[name] = value
    missing = sorted(set(incoming) - set(kept))
    if missing:
        out.append(
            Decision(
                "arrays",
                "drop",
                f"{len(missing)} model array(s) missing or invalid (e.g. {missing[0]!r}): no partial model is sent",
            )
        )
        return None
    return kept


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(float(value)):
        return float(value)
    return None


def _guard_metrics(
    metrics: Mapping[str, Any], min_count: int, out: list[Decision], task: TaskSpec | None
) -> dict[str, int | float]:
    numbers: dict[str, int | float] = {}
    count_keys: dict[str, str | None | bool] = {}
    for key, value in metrics.items():
        if key in ALLOWED_METRICS:
            count_keys[key] = ALLOWED_METRICS[key]
        else:  # the task's own figures (AUC, Dice, ...), counted by the key the task names
            count_keys[key] = task.task.metric_count_key(str(key), list(task.outputs)) if task is not None else False
        if count_keys[key] is False:
            out.append(Decision(f"metric:{key}", "drop", "not an allowed aggregate metric"))
            continue
        number = _number(value)
        if number is None:
            out.append(Decision(f"metric:{key}", "drop", f"not a finite number ({type(value).__name__})"))
            continue
        numbers[key] = number
    kept: dict[str, int | float] = {}
    for key, number in numbers.items():
        count_key = count_keys[key]
        if count_key is not None:
            count = numbers.get(count_key)
            if count is None or count < min_count:
                out.append(
                    Decision(f"metric:{key}", "withhold", f"computed over {count} case(s) < min_count={min_count}")
                )
                continue
        kept[key] = number
    return kept


def _guard_stats(metrics: Mapping[str, Any], min_count: int, out: list[Decision]) -> dict[str, int]:
    kept: dict[str, int] = {}
    for key, value in metrics.items():
        number = _number(value)
        if not STATS_KEY.match(str(key)):
            out.append(Decision(f"metric:{key}", "drop", "not an allowed statistics key"))
        elif not isinstance(number, int):
            out.append(Decision(f"metric:{key}", "drop", f"not a count ({type(value).__name__})"))
        elif number < min_count:
            out.append(Decision(f"metric:{key}", "withhold", f"count below min_count={min_count}"))
        else:
            kept[key] = number
    return kept


def guard_reply(
    op: str,
    *,
    incoming: Mapping[str, ArraySpec],
    arrays: Mapping[str, Any] | None,
    metrics: Mapping[str, Any],
    min_count: int = DEFAULT_MIN_COUNT,
    task: TaskSpec | None = None,
) -> GuardedReply:
    """Filter one ``train``/``evaluate`` reply; see the module docstring for the rules.

    ``task``: the run's task; beyond the common keys above, only its metric keys pass (for its outputs: e.g.
    ``dice-<label>`` for a segmentation task's labels only). Without it, only the common keys pass.
    """
    decisions: list[Decision] = []
    kept_arrays = _guard_arrays(op, arrays, incoming, decisions)
    if op == "query":
        kept_metrics = _guard_stats(metrics, int(min_count), decisions)
    else:
        kept_metrics = _guard_metrics(metrics, int(min_count), decisions, task)
    return GuardedReply(kept_arrays, kept_metrics, decisions)
