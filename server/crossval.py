"""Cross-site evaluation in a live consortium (``fedrad-server crossval``): every model on every site, no training.

Like NVFlare's cross-site model evaluation: the models are the global model
(the last run's ``latest.pt``, or any FedRad model file the coordinator
gives) and the local model of each site that consents
(``site.yaml: crossval: share_local_model: PATH``). Two message waves:

1. a ``query`` with ``purpose = local-model`` to every site, carrying the
   global model's arrays as the template; a consenting site answers with its
   local model's weights, which pass the same outbound guard as a training
   reply (exactly the template's names, shapes and dtypes); the others
   refuse, and that is not an error;
2. an ``evaluate`` of every model at every site: each site scores it on its
   held-out patients and returns aggregate metrics only.

The result, ``crossval.json``, is the matrix rows = models, columns = sites,
each cell the site's aggregate metrics (or why there are none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

CROSSVAL_FILE = "crossval.json"
GLOBAL = "global"


def _reason(reply: Message) -> str:
    return str(reply.error.reason) if reply.has_error() else "empty reply"


def collect_local_models(
    grid: Grid, nodes: list[int], template: ArrayRecord, *, timeout: float, send: Callable[..., list[Message]]
) -> tuple[dict[int, ArrayRecord], dict[int, str]]:
    """(node → its local model's arrays, node → why not) for every site asked."""
    msgs = [
        Message(
            RecordDict({"arrays": template, "config": ConfigRecord({"purpose": "local-model"})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    models, missing = {}, {n: f"no reply within {timeout:.0f} s" for n in nodes}
    for reply in send(grid, msgs, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        arrays = reply.content.array_records.get("arrays") if reply.has_content() else None
        if arrays is not None and set(arrays.keys()) == set(template.keys()):
            models[node] = arrays
            missing.pop(node)
        else:
            missing[node] = _reason(reply) if arrays is None else "reply does not match the task's model"
    return models, missing


def cross_evaluate(
    grid: Grid,
    nodes: list[int],
    models: dict[str, ArrayRecord],
    config: dict,
    *,
    timeout: float,
    send: Callable[..., list[Message]],
) -> dict[str, dict[str, dict]]:
    """model name → node → the site's aggregate metrics, or ``{"error": why}``."""
    msgs = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord({**config, "purpose": "crossval"})}),
            dst_node_id=n,
            message_type=MessageType.EVALUATE,
            group_id=name,
        )  # the reply keeps group_id
        for name, arrays in models.items()
        for n in nodes
    ]
    matrix = {name: {str(n): {"error": f"no reply within {timeout:.0f} s"} for n in nodes} for name in models}
    for reply in send(grid, msgs, timeout=timeout):
        name, node = reply.metadata.group_id, str(reply.metadata.src_node_id)
        if name not in matrix:
            continue
        if reply.has_error() or not reply.has_content():
            matrix[name][node] = {"error": _reason(reply)}
        else:
            record = reply.content.metric_records.get("metrics", {})
            matrix[name][node] = {k: float(v) for k, v in dict(record).items()}
    return matrix


def write_crossval(run_dir: Path, result: dict) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CROSSVAL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), **result}, indent=2))
    os.replace(tmp, path)
    return path
