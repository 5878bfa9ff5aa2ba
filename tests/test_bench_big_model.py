"""The big-model benchmark's arithmetic: what it subtracts and parses (the benchmark itself is not a test)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_big_model import (
    RoundCost,
    fleet_hops,
    model_cost_s,
    parse_checkpoint_seconds,
    round_bytes,
    upload_bytes,
)


def _round(n: int, wave: float, train: float = 1.0) -> RoundCost:
    return RoundCost(round=n, wave_s=wave, train_s=train, site_other_s=0.0, aggregate_s=0.5, checkpoint_s=0.25)


def test_model_cost_is_the_median_non_training_cost_over_the_tiny_model_from_round_two() -> None:
    big = [_round(1, 100.0), _round(2, 5.0), _round(3, 7.0), _round(4, 6.0)]
    tiny = [_round(1, 50.0), _round(2, 2.0), _round(3, 2.0)]
    # big: costs 4.75, 6.75, 5.75 → median 5.75; tiny: 1.75 → the model adds 4.0 s (round 1 never counts)
    assert model_cost_s(big, tiny) == 4.0
    assert round_bytes(2, 100, 50) == 300


def test_checkpoint_seconds_and_fleet_hops_come_from_the_logs() -> None:
    log = "INFO round=2 sites=1 checkpoint_s=0.41\nINFO round=3 sites=1 checkpoint_s=1.5\n"
    assert parse_checkpoint_seconds(log) == {2: 0.41, 3: 1.5}
    supernode = "\n".join(
        [
            "10:00:00.00 INFO [RUN 7] something",
            "10:00:01.00 INFO Receiving: train message",
            "10:00:03.50 INFO Received successfully",
            "10:00:09.00 INFO Sending: train message",
            "10:00:10.25 INFO Sent successfully",
            "10:00:11.00 INFO [RUN 8] other run",
            "10:00:12.00 INFO Receiving: train message",
            "10:00:13.00 INFO Received successfully",
        ]
    )
    assert fleet_hops(supernode, 7) == [(2.5, 1.25)]


def test_upload_bytes_reads_one_runs_train_replies_from_the_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "outbound.jsonl"
    rows = [
        {"run": 7, "type": "train", "bytes": 1000},
        {"run": 7, "type": "evaluate", "bytes": 10},
        {"run": 8, "type": "train", "bytes": 99},
        {"run": 7, "type": "train", "bytes": 1200},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert upload_bytes(log, 7) == [1000, 1200]
    assert upload_bytes(tmp_path / "missing.jsonl", 7) == []
