"""Minimal FedRad ServerApp (Flower Message API): proves the deployment pipeline.

Why minimal: it federates a tiny linear model with ``FedAvg`` so the TLS/auth/
proxy/process plumbing can be tested in seconds; the real model comes from
``shared.training`` later. Heavy imports stay inside ``main`` so loading this
module (Flower does it to find ``app``) stays cheap.

Why a round loop instead of ``strategy.start()``: ``Grid.send_and_receive``
(used by ``start``) sleeps a fixed 3 s between reply polls, which adds up to
~3 s per message wave (two per round); :func:`send_and_receive` polls the same
public Grid API every ``poll_s`` instead. The loop calls only the strategy's
public ``configure_*``/``aggregate_*`` methods, so any ``flwr.serverapp.strategy``
works, and it gives the per-round hook that checkpoints/resume will need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

RoundHook = Callable[[int, ArrayRecord, MetricRecord | None, MetricRecord | None, float], None]


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float, poll_s: float = 0.2) -> list[Message]:
    """Push ``messages`` and collect replies until all arrived or ``timeout`` passed.

    Same contract as ``Grid.send_and_receive`` (late replies are dropped), with
    a short poll interval instead of Flower's fixed 3 s.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return replies


def run_rounds(
    strategy,  # noqa: ANN001 - any flwr.serverapp.strategy.Strategy
    grid: Grid,
    arrays: ArrayRecord,
    *,
    num_rounds: int,
    start_round: int = 1,
    timeout: float,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_every: int = 1,
    on_round_end: RoundHook | None = None,
) -> ArrayRecord:
    """Rounds ``start_round..num_rounds``: train, aggregate, evaluate, hook; return the final arrays.

    Federated evaluation runs every ``evaluate_every`` rounds and always after
    the last one: on the deployment engine each evaluation is a second message
    wave (a fresh ClientApp process per site), i.e. close to half a round.
    """
    for rnd in range(start_round, num_rounds + 1):
        t0 = time.monotonic()
        train_msgs = strategy.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid)
        replies = send_and_receive(grid, train_msgs, timeout=timeout)
        if not any(m.has_content() for m in replies):  # nothing to aggregate: fail the run, loudly
            raise RuntimeError(f"round {rnd}: no site returned an update within {timeout:.0f} s")
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        eval_metrics = None
        if rnd % max(evaluate_every, 1) == 0 or rnd == num_rounds:
            eval_msgs = strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(evaluate_config or {})), grid)
            eval_metrics = strategy.aggregate_evaluate(rnd, send_and_receive(grid, eval_msgs, timeout=timeout))
        elapsed = time.monotonic() - t0
        print(
            f"FEDRAD round={rnd} train_replies={len(replies)} seconds={elapsed:.2f} "
            f"train={dict(train_metrics or {})} eval={dict(eval_metrics or {})}",
            flush=True,
        )
        if on_round_end is not None:
            on_round_end(rnd, arrays, train_metrics, eval_metrics, elapsed)
    return arrays


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` FedAvg rounds over ``min-sites`` connected sites."""
    import torch
    from flwr.serverapp.strategy import FedAvg

    from shared.processes import apply_thread_limit

    apply_thread_limit()
    cfg = context.run_config
    rounds = int(cfg.get("num-server-rounds", 2))
    min_sites = int(cfg.get("min-sites", 2))
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = torch.nn.Linear(8, 2)  # placeholder for shared.training.build_model

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
    )
    completed: list[int] = []

    def on_round_end(rnd: int, *_: object) -> None:
        completed.append(rnd)

    run_rounds(
        strategy,
        grid,
        ArrayRecord(model.state_dict()),
        num_rounds=rounds,
        timeout=float(cfg.get("round-timeout-s", 600)),
        train_config=ConfigRecord({"lr": 0.1, "local-epochs": int(cfg.get("local-epochs", 1))}),
        evaluate_every=int(cfg.get("evaluate-every", 1)),
        on_round_end=on_round_end,
    )
    print(f"FEDRAD rounds_completed={len(completed)} of {rounds}", flush=True)
