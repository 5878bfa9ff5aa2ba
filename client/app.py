"""FedRad ClientApp (Flower Message API): train and evaluate the global model on the site's data.

Flower spawns a fresh ``flwr-clientapp`` process per message, so each handler
loads the site's data from the on-disk tensor cache and keeps nothing in
memory; the work is in :mod:`client.federated` (testable without Flower).
Heavy imports stay inside the handlers so Flower's loading of this module
stays cheap. Replies carry the weights (train) and aggregate metrics only.

Node config (``flower-supernode --node-config``): ``site-config`` (absolute
path of site.yaml), ``site-name``. Run config: ``classes``, ``image-size``,
``model``, ``seed``, ``consortium``, ``run-dir`` (FedBN state key).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
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


def _setup(msg: Message, context: Context):  # noqa: ANN202 - lazily imported types
    """Thread limit, task, site data and (FedBN) local norm store for this message."""
    t0 = time.perf_counter()
    from client import federated as fed  # torch, MONAI (via shared.augment), the training code
    from shared.config import ConfigError
    from shared.processes import apply_thread_limit

    apply_thread_limit()
    run = context.run_config
    site_config = context.node_config.get("site-config")
    if not site_config:
        raise ConfigError("node config has no 'site-config' (fedrad-site start sets it to the site.yaml path)")
    task = fed.Task.from_run_config(run)
    import_s = time.perf_counter() - t0
    data = fed.load_site_data(site_config, task, int(run.get("seed", 0)), context.node_config.get("site-name"))
    config = dict(msg.content["config"])
    store = None
    if config.get("keep-local-norm"):
        key = fed.LocalNormStore.run_key(str(run.get("consortium", "")), str(run.get("run-dir", "")))
        store = fed.LocalNormStore(data.work_dir, key, data.site_name)
    return fed, task, data, config, store, import_s


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global weights; reply with the new weights and aggregate metrics."""
    startup, t0 = process_age_s(), time.perf_counter()
    fed, task, data, config, store, import_s = _setup(msg, context)
    state, metrics = fed.train_round(task, msg.content["arrays"].to_torch_state_dict(), data, config, store)
    metrics.update({"startup-s": startup, "import-s": import_s, "handler-s": time.perf_counter() - t0})
    reply = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Aggregate figures of the global model on this site's held-out patients (metrics only, no weights)."""
    startup, t0 = process_age_s(), time.perf_counter()
    fed, task, data, config, store, import_s = _setup(msg, context)
    metrics = fed.evaluate_round(task, msg.content["arrays"].to_torch_state_dict(), data, config, store)
    metrics.update({"startup-s": startup, "import-s": import_s, "handler-s": time.perf_counter() - t0})
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
