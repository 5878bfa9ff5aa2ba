"""How sites' aggregate metrics become one round figure (passed to every Flower strategy).

Flower's default weighted mean would average timings and drop the example
count; and an AUC is undefined at a site whose held-out part lacks a class.
Rules: ``num-examples`` and ``auc-examples`` are summed; ``*-s`` timings take
the max (the slowest site sets the round's pace); ``auc`` is weighted by
``auc-examples`` (sites where it is undefined send 0 and do not count, and it is
left out when no site could compute it); per-image DP's ``dp-epsilon`` takes the
largest and ``dp-noise-multiplier`` the smallest (the least private site); a site's own interval (``auc-ci-*``,
``dice-<label>-ci-*``: :meth:`shared.tasks.Task.per_site`) is left out
(``fedrad-server crossval`` keeps it per site); a metric with its own count
(``hd95-mm-<label>`` and ``hd95-mm-<label>-examples``; the pixel figure ``hd95-px-<label>`` apart) is weighted by it (summed, like
every ``*-examples`` count); everything else is weighted by
``num-examples``. Each key is combined over the sites that sent it: a site
withholds loss/accuracy/AUC over fewer cases than its ``min_count``.
``sites`` counts the replies that were aggregated.
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

from shared.tasks import get_task, task_names

SUMMED = ("num-examples", "auc-examples")
WORST = {
    "dp-epsilon": max,
    "dp-noise-multiplier": min,
}  # per-image DP: the round is as private as its least private site


def is_per_site(key: str) -> bool:
    """A site's own figure (its bootstrap interval): meaningless averaged, so left out of the round figure."""
    return any(get_task(name).per_site(key) for name in task_names())


def aggregate_metrics(records: list[RecordDict], weight_key: str = "num-examples") -> MetricRecord:
    """Combine the single MetricRecord of each reply (see module docstring)."""
    rows = [dict(next(iter(r.metric_records.values()))) for r in records]
    out = MetricRecord()
    if not rows:
        return out
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for key in (k for k in keys if not is_per_site(k)):
        having = [r for r in rows if key in r]
        values = [float(r[key]) for r in having]
        if key in SUMMED or key.endswith("-examples"):
            out[key] = int(sum(values))
        elif key in WORST:
            out[key] = WORST[key](values)
        elif key.endswith("-s"):
            out[key] = max(values)
        else:
            own = f"{key}-examples"  # auc-examples, hd95-mm-<label>-examples
            wkey = own if key == "auc" or own in keys else weight_key
            weights = [float(r.get(wkey, 0)) for r in having]
            if sum(weights) > 0:
                out[key] = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    out["sites"] = len(rows)
    return out
