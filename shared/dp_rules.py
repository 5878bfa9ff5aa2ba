"""Which model arrays differential privacy covers: one rule shared by the server (noise) and the sites (clipping).

BatchNorm running statistics and counters are not learned parameters: they
are per-channel means/variances of a site's images and a step counter.
Noise on a variance can make it negative, and a counter cannot carry
Gaussian noise, so under DP they are averaged outside the noised mean (the
BN policy ``average``) and excluded from each site's clipped update. The
rule goes by the state-dict name (torch and MONAI use these suffixes), so
the per-message ClientApp can apply it without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable

NORM_STATISTIC_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_norm_statistic(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in NORM_STATISTIC_SUFFIXES


def dp_covered(names: Iterable[str]) -> list[str]:
    """The arrays whose update is clipped at the site and noised at the server, in order."""
    return [n for n in names if not is_norm_statistic(n)]
