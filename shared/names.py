"""Comma-separated name lists, as the run config and CLI options carry classes, segment labels and strategies.

Imports nothing: the per-message ClientApp uses it on its forwarding path.
"""

from __future__ import annotations


def name_list(text: object) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``: split on commas, strip, drop empty names."""
    return [name.strip() for name in str(text or "").split(",") if name.strip()]
