"""Data statistics from every site, for the coordinator's QC view (``fedrad-server stats``).

One Flower ``query`` message to each connected site; each answers with
counts (images, per class, per scanner manufacturer, a 10-bin histogram of
mean image intensity) that its outbound guard let through — every count
below the site's ``min_count`` is withheld. Nothing is aggregated: the point
is to compare sites (a site with one class only, or a shifted intensity
histogram, is a data problem to fix before training). The result is
``RUN_DIR/stats.json`` keyed by Flower node id; the coordinator adds the
sites' names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

STATS_FILE = "stats.json"


def collect_statistics(grid: Grid, run_dir: Path, *, timeout: float, send: Callable[..., list[Message]]) -> Path:
    """Ask every connected site; write and return ``run_dir/stats.json``."""
    nodes = list(grid.get_node_ids())
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord({"purpose": "data-qc"})}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in nodes
    ]
    replies = send(grid, msgs, timeout=timeout)
    sites: dict[str, dict] = {str(n): {"error": f"no reply within {timeout:.0f} s"} for n in nodes}
    for reply in replies:
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            sites[node] = {"error": str(reply.error.reason)}
        else:
            record = next(iter(reply.content.metric_records.values()), {})
            sites[node] = {"counts": {k: int(v) for k, v in dict(record).items()}}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STATS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), "sites": sites}, indent=2))
    os.replace(tmp, path)
    return path
