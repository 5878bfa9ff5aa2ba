"""The aggregate metrics a 3D segmentation site may send: the 2D task's keys, HD95 in millimetres only.

Same names and rules as :mod:`shared.tasks.segmentation.metric_keys` (so the server's weighting by
``-examples`` counts, the per-site rule for CIs and the [0, 1] bound of Dice apply unchanged):
``dice-mean``, ``dice-<label>`` (counted by ``num-examples``), ``dice-<label>-ci-low/high`` (per site),
``hd95-mm-<label>`` counted by ``hd95-mm-<label>-examples`` (the cases where both masks are non-empty;
the cases where HD95 is undefined are ``num-examples`` minus that count: no key of its own). A volume
always has its voxel spacing, so there is no ``hd95-px-*`` here: such a key from a 3D site is refused.

Imports only ``re`` (through the 2D module): the outbound guard runs in every per-message ClientApp process.
"""

from __future__ import annotations

from collections.abc import Collection

from shared.tasks.segmentation import metric_keys as seg2d

COUNT_KEY = seg2d.COUNT_KEY
is_fraction = seg2d.is_fraction
is_per_site = seg2d.is_per_site


def _pixels(key: str) -> bool:
    return key.startswith("hd95-px-")


def count_key(key: str, labels: Collection[str] | None = None) -> str | None | bool:
    """The key counting the cases ``key`` averages; None for a count; False: not a 3D segmentation key."""
    return False if _pixels(key) else seg2d.count_key(key, labels)


def metric_keys(labels: list[str]) -> list[str]:
    """Every aggregate key an evaluation of ``labels`` may send (tests, docs, the guard's listing)."""
    return [k for k in seg2d.metric_keys(labels) if not _pixels(k)]
