"""The aggregate segmentation metrics a site may send, by key pattern (the per-label keys vary by task).

One place for the rules that the site's outbound guard, the server's reply
validation and the round aggregation all apply, so they cannot drift apart:

* ``dice-mean``, ``dice-<label>``: mean Dice over the held-out cases (counted by ``num-examples``);
* ``hd95-mm-<label>``: mean HD95 in millimetres over the cases whose image has a
  pixel spacing and where both masks are non-empty, counted by
  ``hd95-mm-<label>-examples`` (HD95 is undefined elsewhere);
* ``hd95-px-<label>``: the same over the cases without a pixel spacing, in pixels
  of the model input, counted by ``hd95-px-<label>-examples``. Never one mean over
  both units: the server averages each key by its own count;
* ``dice-<label>-ci-low`` / ``-ci-high``: the site's own bootstrap interval of
  its Dice, per site like ``auc-ci-*`` (never averaged across sites).

No per-case figure has a key here. Imports only ``re``: the guard runs in every
per-message ClientApp process.
"""

from __future__ import annotations

import re
from collections.abc import Collection

LABEL = r"[A-Za-z0-9_.]{1,40}"  # shared.config.SEGMENT_LABEL_PATTERN: labels cannot contain '-'
_DICE = re.compile(rf"^dice-(mean|{LABEL})$")
_DICE_CI = re.compile(rf"^dice-({LABEL})-ci-(?:low|high)$")
HD95_UNITS = ("mm", "px")  # shared.tasks.segmentation.metrics: mm where the pixel spacing is known, else pixels
_HD95 = re.compile(rf"^hd95-(?:mm|px)-({LABEL})$")
_HD95_COUNT = re.compile(rf"^hd95-(?:mm|px)-({LABEL})-examples$")
COUNT_KEY = "num-examples"


def count_key(key: str, labels: Collection[str] | None = None) -> str | None | bool:
    """The key counting the cases ``key`` was computed over; None for a count itself; False: not a segmentation key.

    With ``labels`` (the outbound guard passes the task's segment names) only those labels' keys qualify, so no
    other value can leave under a made-up label.
    """
    for pattern, counted_by in (
        (_DICE, COUNT_KEY),
        (_DICE_CI, COUNT_KEY),
        (_HD95, f"{key}-examples"),
        (_HD95_COUNT, None),
    ):
        m = pattern.match(key)
        if m:
            known = labels is None or m.group(1) in labels or (pattern is _DICE and m.group(1) == "mean")
            return counted_by if known else False
    return False


def is_segmentation_key(key: str) -> bool:
    return count_key(key) is not False


def is_fraction(key: str) -> bool:
    """Dice figures lie in [0, 1]."""
    return bool(_DICE.match(key) or _DICE_CI.match(key))


def is_per_site(key: str) -> bool:
    """A site's own interval: meaningless averaged over sites."""
    return bool(_DICE_CI.match(key))


def metric_keys(labels: list[str]) -> list[str]:
    """Every aggregate key a segmentation evaluation of ``labels`` may send (for tests and docs)."""
    out = ["dice-mean"]
    for label in labels:
        out += [
            f"dice-{label}",
            f"dice-{label}-ci-low",
            f"dice-{label}-ci-high",
        ]
        for unit in HD95_UNITS:
            out += [f"hd95-{unit}-{label}", f"hd95-{unit}-{label}-examples"]
    return out
