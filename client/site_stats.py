"""A site's data summary for the coordinator's quality check: counts and a coarse histogram, nothing per case.

``fedrad-server stats`` asks every site (a Flower ``query`` message); the
reply passes the same outbound guard as training replies, which withholds
every count below the site's ``privacy.min_count``. What a site reports:

* ``images``: labelled usable images;
* ``class:<name>``: images per class of the task;
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
import torch

from shared.dataset import SiteDataset

INTENSITY_BINS = 10  # keys follow client.outbound_guard.STATS_KEY


def safe_name(text: str) -> str:
    """A header value reduced to what may appear in a stats key."""
    return (re.sub(r"[^A-Za-z0-9 ._-]", "_", str(text)).strip() or "unknown")[:40]


def site_statistics(data: SiteDataset, manufacturers: Mapping[str, int]) -> dict[str, int]:
    """Counts under the keys above (the outbound guard applies min_count afterwards)."""
    out: dict[str, int] = {"images": len(data)}
    counts = torch.bincount(data.labels, minlength=len(data.classes)).tolist()
    out.update({f"class:{safe_name(c)}": int(n) for c, n in zip(data.classes, counts, strict=True)})
    for name, n in manufacturers.items():
        key = f"manufacturer:{safe_name(name)}"
        out[key] = out.get(key, 0) + int(n)
    means = data.images.flatten(1).mean(dim=1).clamp(0.0, 1.0).numpy() if len(data) else np.zeros(0)
    hist, _ = np.histogram(means, bins=INTENSITY_BINS, range=(0.0, 1.0))
    out.update({f"intensity-bin:{i}": int(n) for i, n in enumerate(hist)})
    return out
