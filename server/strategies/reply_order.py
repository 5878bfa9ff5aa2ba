"""A fixed order for a round's replies, whatever order the network delivered them in.

Aggregation sums floating-point arrays, and a float sum depends on its order:
two runs of the same seed differed by one float32 ulp after round 1 (1.2e-7)
and by 1.9 in some weight after round 10, because Adam at the sites amplifies
the difference round after round. Sorting the replies by a digest of their
content makes a federated run reproducible bit for bit from its seed, so two
strategies can be compared seed by seed (``fedrad-bench generalization``'s paired
differences) without the arrival order adding noise of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

from flwr.app import Message

from server.strategies.validation import ARRAYS_KEY, METRICS_KEY

T = TypeVar("T")


def content_digest(msg: Message) -> str:
    """sha256 over a reply's arrays (names, dtypes, shapes, bytes) in name order; over its metrics if it has no arrays.

    Not over a training reply's metrics: they include timings (``train-s``, ``startup-s``) that differ
    from run to run, and would reorder identical updates."""
    h = hashlib.sha256()
    content = msg.content
    if ARRAYS_KEY in content.array_records:
        record = content[ARRAYS_KEY]
        for name in sorted(record.keys()):
            array = record[name]
            h.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
            h.update(array.data)
    elif METRICS_KEY in content.metric_records:
        record = content[METRICS_KEY]
        h.update(repr(sorted((k, record[k]) for k in record.keys())).encode())
    return h.hexdigest()


def in_content_order(items: Iterable[T], message_of=lambda item: item) -> list[T]:  # noqa: ANN001
    """``items`` sorted by the content digest of their reply (``message_of`` picks it from an item)."""
    return sorted(items, key=lambda item: content_digest(message_of(item)))
