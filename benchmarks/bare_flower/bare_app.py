"""Bare Flower baseline for bench_round_overhead.py: the tutorial shape, nothing of FedRad's round machinery.

ServerApp: ``FedAvg().start()`` (Flower's own round loop, its 3 s reply
polling), train-only rounds. ClientApp: imports torch in the message process,
builds the same SmallCNN, trains it for a few steps on random 32×32 images and
replies with the weights and its training time. The ServerApp writes each
round's wall time (between Flower's per-round ``evaluate_fn`` calls) and the
slowest site's training time to the run-config ``out-file``.
"""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    from client.app import process_age_s

    startup, t_handler = process_age_s(), time.perf_counter()
    import torch

    from shared.models import build_model

    torch.set_num_threads(1)
    model = build_model("smallcnn", 2, 32)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 2, (64,))
    t0 = time.perf_counter()
    for i in range(0, 64, 16):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
        opt.step()
    train_s = time.perf_counter() - t0
    metrics = {
        "num-examples": 64,
        "train-s": train_s,
        "startup-s": startup,
        "handler-s": time.perf_counter() - t_handler,
    }
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}), reply_to=msg
    )


@server.main()
def main(grid: Grid, context: Context) -> None:
    from server.strategies.metrics import aggregate_metrics  # timings: the slowest site's
    from shared.models import build_model

    rounds, sites = int(context.run_config["num-server-rounds"]), int(context.run_config["min-sites"])
    marks: list[float] = []

    def mark(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        marks.append(time.monotonic())
        return MetricRecord()

    strategy = FedAvg(
        fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites, train_metrics_aggr_fn=aggregate_metrics
    )
    result = strategy.start(
        grid, ArrayRecord(build_model("smallcnn", 2, 32).state_dict()), num_rounds=rounds, evaluate_fn=mark
    )
    per_round = [
        {"round": r, "seconds": marks[r] - marks[r - 1], **dict(result.train_metrics_clientapp.get(r, {}))}
        for r in range(1, len(marks))
    ]
    with open(str(context.run_config["out-file"]), "w") as fh:
        json.dump(per_round, fh)
