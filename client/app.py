"""FedRad ClientApp (Flower Message API): train and evaluate the global model on the site's data.

Flower spawns a fresh ``flwr-clientapp`` process per message. With the site's
warm worker running (node config ``worker-socket``, set by ``fedrad-site
start``) this process only forwards the message's arrays and config to it
(:mod:`client.worker_protocol`: numpy and the standard library, no torch) and
sends the reply on. Without it, the same work runs here (:class:`client.federated.SiteSession`),
importing torch and reading the tensor cache for every message. Replies
carry the weights (train) and aggregate metrics only.

Node config (``flower-supernode --node-config``): ``site-config`` (absolute
path of site.yaml), ``site-name``, optional ``worker-socket``. Run config:
``classes``, ``image-size``, ``model``, ``seed``, ``consortium``, ``run-dir``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere), read before any heavy import.

    It is the per-message cold start: process spawn plus Flower's and this app's imports.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        return max(0.0, time.time() - (btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def _in_process(op: str, msg: Message, context: Context, config: dict) -> tuple[dict[str, np.ndarray] | None, dict]:
    """The message's work in this process (no warm worker): torch import, data load, train/evaluate."""
    from client.federated import SiteSession
    from shared.processes import apply_thread_limit

    apply_thread_limit()
    session = SiteSession.open(context.run_config, context.node_config)
    state, metrics = session.handle(op, msg.content["arrays"].to_torch_state_dict(), config)
    return ({k: v.numpy() for k, v in state.items()} if state is not None else None), metrics


def _handle(op: str, msg: Message, context: Context) -> Message:
    """Forward to the warm worker (or work in-process); reply with weights (train) and aggregate metrics."""
    startup, t0 = process_age_s(), time.perf_counter()
    from client.worker_protocol import WorkerUnavailable, call_worker

    config = dict(msg.content["config"])
    socket_path = context.node_config.get("worker-socket")
    warm = 0
    try:
        if not socket_path:
            raise WorkerUnavailable("no worker-socket in the node config")
        arrays = {name: arr.numpy() for name, arr in msg.content["arrays"].items()}
        out, metrics = call_worker(socket_path, op, run_id=msg.metadata.run_id, run_config=dict(context.run_config),
                                   config=config, arrays=arrays)  # fmt: skip
        state, warm = (out if op == "train" else None), 1
    except WorkerUnavailable as exc:
        print(f"FedRad: {exc}; working in this process (slower)", file=sys.stderr, flush=True)
        state, metrics = _in_process(op, msg, context, config)
    metrics.update({"startup-s": startup, "handler-s": time.perf_counter() - t0, "warm-worker": warm})
    reply = RecordDict({"metrics": MetricRecord(metrics)})
    if state is not None:
        reply["arrays"] = ArrayRecord(array_dict={name: Array(arr) for name, arr in state.items()})
    return Message(reply, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global weights; reply with the new weights and aggregate metrics."""
    return _handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Aggregate figures of the global model on this site's held-out patients (metrics only, no weights)."""
    return _handle("evaluate", msg, context)
