"""The learning-rate schedule: one formula for centralised epochs and federated rounds."""

from __future__ import annotations

import math

import pytest
import torch

from server.app import RunConfigError, RunSettings
from shared.lr_schedule import scheduled_lr
from shared.models import build_model
from shared.tasks.classification.dataset import SiteDataset
from shared.training import TrainConfig, train_model


def test_cosine_starts_at_the_base_rate_and_falls_to_near_zero() -> None:
    rates = [scheduled_lr(1e-3, step, 10, "cosine") for step in range(10)]
    assert rates[0] == 1e-3 and all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert rates[5] == pytest.approx(0.5e-3) and rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.9 * math.pi)))
    assert {scheduled_lr(1e-3, step, 10, "constant") for step in range(10)} == {1e-3}


@pytest.mark.parametrize(("step", "total", "schedule"), [(10, 10, "cosine"), (-1, 10, "cosine"), (0, 10, "linear")])
def test_a_step_outside_the_run_or_an_unknown_schedule_is_an_error(step: int, total: int, schedule: str) -> None:
    with pytest.raises(ValueError, match="outside a run|unknown learning-rate schedule 'linear'"):
        scheduled_lr(1e-3, step, total, schedule)


def test_the_server_sends_each_round_its_rate() -> None:
    base = {"run-dir": "/tmp/r", "classes": "a,b", "num-server-rounds": 4, "lr": 0.01}
    cosine = RunSettings.from_run_config({**base, "lr-schedule": "cosine"})
    assert [cosine.train_config(r)["lr"] for r in (1, 3)] == [0.01, pytest.approx(0.005)]
    assert RunSettings.from_run_config(base).train_config(4)["lr"] == 0.01  # constant unless asked
    with pytest.raises(RunConfigError, match="'lr-schedule'.*constant, cosine"):
        RunSettings.from_run_config({**base, "lr-schedule": "step"})


def test_centralised_training_follows_the_schedule_epoch_by_epoch() -> None:
    g = torch.Generator().manual_seed(0)
    data = SiteDataset(torch.rand((8, 1, 16, 16), generator=g), torch.tensor([0, 1] * 4), ["a", "b"])
    history = train_model(
        build_model("smallcnn", 2, 16), data, TrainConfig(epochs=4, batch_size=4, lr=0.01, lr_schedule="cosine")
    )
    assert [h["lr"] for h in history] == [scheduled_lr(0.01, e, 4, "cosine") for e in range(4)]
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        TrainConfig(lr_schedule="warm")
