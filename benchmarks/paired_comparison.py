"""Seed-by-seed differences between two benchmark models, with a 95 % confidence interval.

Why paired: every arm of one seed shares that seed's patient split, initial
weights and shuffling (and a federated run is reproducible from its seed,
:mod:`server.strategies.reply_order`). Most of the seed-to-seed spread is
therefore common to both models, and the difference per seed shows a lever's
effect far more sharply than two means ± sd side by side. A difference is
called *measurable* when its 95 % interval (Student's t over the seeds)
excludes zero; with 1 seed nothing is measurable.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

SITE_MEAN = "site mean"  # the column name for the per-seed mean over the training sites' test sets


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """``a − b`` per seed (seeds where either is NaN are left out), their mean, 95 % CI, wins and a verdict."""
    from scipy.stats import t as student_t

    diffs = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    out: dict = {
        "per_seed": [round(d, 4) for d in diffs],
        "n": len(diffs),
        "mean": None,
        "ci95": None,
        "wins": sum(d > 0 for d in diffs),
        "measurable": False,
    }
    if not diffs:
        return out
    mean = statistics.fmean(diffs)
    out["mean"] = round(mean, 4)
    if len(diffs) > 1:
        half = float(student_t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        out["ci95"] = [round(mean - half, 4), round(mean + half, 4)]
        out["measurable"] = bool(mean - half > 0 or mean + half < 0)
    return out


# Where a lever on top of a strategy changes the model: AdaBN at unseen sites, fine-tuning at the training sites,
# histogram equalisation (an input layer of the model) and scanner-appearance augmentation (every site trains
# with it), server momentum (the shared weights), the carried site optimizer (how every site trains) and the
# round average (the published weights) everywhere. A combination ("equalize + scanner-aug") acts where its parts do.
LEVER_COLUMNS = {
    "AdaBN": "unseen",
    "finetune": "sites",
    "equalize": "all",
    "scanner-aug": "all",
    "momentum": "all",
    "carried optimizer": "all",
    "round average": "all",
}


def comparisons(
    series: Mapping[str, Mapping[str, Sequence[float]]],
    federated: Sequence[str],
    site_names: Sequence[str],
    unseen: Sequence[str],
    best: str | None,
    baseline: str = "fedavg",
) -> list[dict]:
    """The paired differences a consortium asks about, from ``series`` (model → column → value per seed).

    * each strategy against plain ``baseline`` (FedAvg), on the site mean and each unseen site;
    * each lever on top of a strategy (``"<strategy> + <lever>"``, also ``"pooled + <lever>"``) against that
      strategy, where the lever acts: AdaBN at the unseen sites, fine-tuning at the training sites (the site
      mean), histogram equalisation at both;
    * the best federated model against each site's local-only model, on that site's own test set and on each
      unseen site: does joining the consortium pay for every hospital?
    * the best federated model against pooled, on the site mean and each unseen site: what federation costs.
    """
    rows = []

    def add(a: str, b: str, column: str) -> None:
        if a in series and b in series and column in series[a] and column in series[b]:
            rows.append(
                {"model": a, "against": b, "column": column, **paired_difference(series[a][column], series[b][column])}
            )

    for model in federated:
        strategy, _, lever = (part.strip() for part in model.partition("+"))
        if not lever:
            for column in (SITE_MEAN, *unseen) if model != baseline else ():
                add(model, baseline, column)
        else:
            first, _, more = (part.strip() for part in lever.partition("+"))
            where = LEVER_COLUMNS.get(first) if not more else "all"
            columns = unseen if where == "unseen" else (SITE_MEAN, *unseen) if where == "all" else (SITE_MEAN,)
            for column in columns:
                add(model, strategy, column)
                if more:  # what the last lever adds on top of the others
                    add(model, model.rsplit(" + ", 1)[0], column)
    if best:
        for name in site_names:
            for column in (f"{name} test", *unseen):
                add(best, f"local {name}", column)
        for column in (SITE_MEAN, *unseen):  # the price of federation, seed by seed (the ratio's paired twin)
            add(best, "pooled", column)
    return rows
