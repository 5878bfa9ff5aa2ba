"""The base of FedRad's batch augmentations: one ``strength`` knob, 0 = off.

Its own module so that :mod:`shared.augment` (geometry and intensity jitter, and
:func:`shared.augment.build_augment`, which composes the two) and
:mod:`shared.scanner_augment` (scanner appearance) both build on it without
importing each other: the only edge between them is ``augment`` → ``scanner_augment``.
"""

from __future__ import annotations

import math


class StrengthAugment:
    """A batch augmentation whose every range scales with one ``strength`` (0 = off, returns its input)."""

    name = "augmentation"

    def __init__(self, strength: float = 1.0) -> None:
        if not (strength >= 0 and math.isfinite(strength)):
            raise ValueError(f"{self.name} strength must be a finite number >= 0, got {strength}")
        self.strength = float(strength)

    @property
    def enabled(self) -> bool:
        return self.strength > 0
