"""Client-level DP: site clipping, server noise with Flower's wrapper, ε from Flower's RDP accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from client.dp_clip import clip_update
from server.consortium import parse_consortium
from server.strategies import StrategyError, build_strategy
from server.strategies.dp import DpSettings, epsilon_next, make_private, privacy_report, replay
from shared.dp_rules import dp_covered, is_norm_statistic
from shared.models import build_model
from tests.test_strategies import Grid, reply, site_state, task_identity, train_metrics  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", 2, 16)


def test_site_clips_only_learned_parameters(model: torch.nn.Module) -> None:
    received = {k: v.numpy() for k, v in model.state_dict().items()}
    new = {k: (v + 0.5 if not is_norm_statistic(k) else v * 3).astype(v.dtype) for k, v in received.items()}
    clipped, norm = clip_update(received, new, clipping_norm=1.0)
    covered = dp_covered(received)
    assert norm == pytest.approx(0.5 * np.sqrt(sum(received[k].size for k in covered)), rel=1e-5)
    after = np.sqrt(sum(float(np.sum((clipped[k].astype(np.float64) - received[k]) ** 2)) for k in covered))
    assert after == pytest.approx(1.0, rel=1e-4)
    for k in received:
        assert clipped[k].dtype == received[k].dtype
        if is_norm_statistic(k):
            np.testing.assert_array_equal(clipped[k], new[k])  # statistics are not part of the clipped update
    small = {k: v + (1e-4 if k in covered else 0) for k, v in received.items()}
    kept, _ = clip_update(received, small, 1.0)  # an update inside the bound passes unchanged
    for k in covered:
        np.testing.assert_allclose(kept[k], small[k], rtol=0, atol=1e-7)


def test_dp_only_for_fedavg_family(model: torch.nn.Module) -> None:
    s = build_strategy("fedadam", "{}", model, min_sites=2)
    with pytest.raises(StrategyError, match="fedavg, fedprox"):
        make_private(s, DpSettings(1.0, 1.0, 1e-5))


@pytest.mark.usefixtures("task_identity")
def test_server_adds_calibrated_noise_equal_weights_and_accounts_epsilon(model: torch.nn.Module) -> None:
    s = build_strategy("fedavg", "{}", model, min_sites=2)
    make_private(s, DpSettings(noise_multiplier=1.5, clipping_norm=0.2, delta=1e-5))
    assert s.bn_policy == "average" and set(s.held) == {k for k in s.template if is_norm_statistic(k)}
    arrays = ArrayRecord({k: v for k, v in model.state_dict().items()})
    msgs = s.configure_train(1, arrays, {"server-round": 1}, Grid(), available=2)
    assert all(m.content["config"]["clipping_norm"] == 0.2 for m in msgs)
    assert epsilon_next(s, 2) == pytest.approx(2.98, abs=0.02)  # 1 round at z = 1.5, δ = 1e-5 (RDP)
    assert epsilon_next_fresh(5) == pytest.approx(7.53, abs=0.02)  # 5 rounds: the figure in consortium.yaml
    torch.manual_seed(1)
    a, b = site_state(model, 0.01, 5), site_state(model, 0.03, 7)
    out = s.aggregate_train(1, [reply(11, a, train_metrics(10)), reply(12, b, train_metrics(90))])
    assert out.arrays is not None and out.rejected == []
    key = next(k for k in dp_covered(s.template) if model.state_dict()[k].numel() > 1000)
    plain = (a[key] + b[key]).numpy() / 2  # equal weights despite 10 vs 90 examples
    noise = out.arrays[key].numpy() - plain
    assert np.std(noise) == pytest.approx(1.5 * 0.2 / 2, rel=0.15)  # z·C/sites
    report = privacy_report(s)
    assert report["rounds_released"] == 1 and report["epsilon"] == pytest.approx(epsilon_next_fresh(1), rel=1e-6)
    assert out.metrics["num-examples"] == 100 and "dp-weight" not in out.metrics
    resumed = build_strategy("fedavg", "{}", model, min_sites=2)
    make_private(resumed, DpSettings(1.5, 0.2, 1e-5))
    replay(resumed, [2])
    assert privacy_report(resumed)["epsilon"] == pytest.approx(report["epsilon"], rel=1e-9)


def epsilon_next_fresh(rounds: int) -> float:
    model = build_model("smallcnn", 2, 16)
    s = build_strategy("fedavg", "{}", model, min_sites=2)
    make_private(s, DpSettings(1.5, 0.2, 1e-5))
    replay(s, [2] * (rounds - 1))
    return epsilon_next(s, 2)


def test_consortium_privacy_section_becomes_run_config() -> None:
    base = {"name": "C", "address": "h:9443"}
    cfg = parse_consortium({**base, "privacy": {"dp": {"noise_multiplier": 1.5, "clipping_norm": 0.5}}})
    run = cfg.to_run_config()
    assert (run["dp-noise-multiplier"], run["dp-clipping-norm"], run["dp-delta"]) == (1.5, 0.5, 1e-5)
    assert parse_consortium(base).to_run_config()["dp-noise-multiplier"] == 0.0
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="noise_multipler"):
        parse_consortium({**base, "privacy": {"dp": {"noise_multipler": 1.5, "clipping_norm": 0.5}}})


def test_coordinator_round_row_shows_epsilon() -> None:
    from server.coordinator import round_row

    row = {
        "round": 2,
        "sites_answered": 3,
        "sites_failed": 0,
        "seconds": 21.0,
        "train": {"train-loss": 0.5},
        "privacy": {"epsilon": 4.4012, "delta": 1e-5},
    }
    assert "DP ε=4.40 (δ=1e-05)" in round_row(row).metrics
