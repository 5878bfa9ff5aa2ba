"""A site's data summary for the coordinator's quality check: counts and a coarse histogram, nothing per case.

``fedrad-server stats`` asks every site (a Flower ``query`` message); the
reply passes the same outbound guard as training replies, which withholds
every count below the site's ``privacy.min_count``. What a site reports:

* ``images``: labelled usable cases (an image; a volume for a 3D task);
* ``class:<name>``: images per output of the task (a class; a segment: images where it is present);
* ``manufacturer:<name>``: usable images per scanner manufacturer (the
  name reduced to letters, digits, space and ``._-``, at most 40 characters);
* ``intensity-bin:<i>``: images whose mean preprocessed intensity falls in
  the i-th tenth of [0, 1] — a scanner or export whose windowing differs
  shows up as a shifted histogram.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from shared.tasks.base import TaskDataset
from shared.training import task_of

INTENSITY_BINS = 10  # keys follow client.outbound_guard.STATS_KEY


def safe_name(text: str) -> str:
    """A header value reduced to what may appear in a stats key."""
    return (re.sub(r"[^A-Za-z0-9 ._-]", "_", str(text)).strip() or "unknown")[:40]


def site_statistics(parts: list[TaskDataset], manufacturers: Mapping[str, int]) -> dict[str, int]:
    """Counts over the site's cases (``parts``: e.g. its training and held-out parts) under the keys above; the
    outbound guard applies min_count afterwards."""
    out: dict[str, int] = {"images": sum(len(p) for p in parts)}
    for part in parts:
        for name, n in task_of(part).output_counts(part).items():
            key = f"class:{safe_name(name)}"
            out[key] = out.get(key, 0) + int(n)
    for name, n in manufacturers.items():
        key = f"manufacturer:{safe_name(name)}"
        out[key] = out.get(key, 0) + int(n)
    # case by case as the task reads them (a batch of images, a volume slab by slab): never all held at once
    means = [task_of(p).mean_intensities(p) for p in parts]
    means = np.concatenate(means) if means else np.zeros(0)
    hist, _ = np.histogram(means, bins=INTENSITY_BINS, range=(0.0, 1.0))
    out.update({f"intensity-bin:{i}": int(n) for i, n in enumerate(hist)})
    return out
