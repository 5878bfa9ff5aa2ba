"""Client-level DP for a segmentation UNet: the same site clipping and server noise as for classification.

Issue 7 asks that DP works for the segmentation task; the UNet has norm layers
and many small arrays, so this checks that clipping bounds its whole update and
that the noisy server aggregate accepts UNet-shaped replies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from client.dp_clip import clip_update
from server.strategies import build_strategy
from server.strategies.dp import DpSettings, make_private, privacy_report
from shared.dp_rules import dp_covered, is_norm_statistic
from shared.tasks import get_task
from tests.test_strategies import Grid, reply, site_state, task_identity  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_task("segmentation").build_model("unet", 2, 32)  # as server/app.py builds it: 2 labels, 32 px


def test_site_clipping_bounds_a_unet_update(unet: torch.nn.Module) -> None:
    received = {k: v.numpy() for k, v in unet.state_dict().items()}
    rng = np.random.default_rng(0)
    new = {
        k: (v + rng.normal(0, 0.1, v.shape) if np.issubdtype(v.dtype, np.floating) else v).astype(v.dtype)
        for k, v in received.items()
    }
    covered = dp_covered(received)
    assert covered and all(not is_norm_statistic(k) for k in covered)
    clipped, norm = clip_update(received, new, clipping_norm=0.5)
    assert norm > 0.5  # the update was larger than the bound
    after = np.sqrt(sum(float(np.sum((clipped[k].astype(np.float64) - received[k]) ** 2)) for k in covered))
    assert after == pytest.approx(0.5, rel=1e-4)
    assert set(clipped) == set(received)
    for k in received:
        assert clipped[k].shape == received[k].shape and clipped[k].dtype == received[k].dtype


@pytest.mark.usefixtures("task_identity")
def test_server_noise_aggregates_unet_replies(unet: torch.nn.Module) -> None:
    s = build_strategy("fedavg", "{}", unet, min_sites=2)
    make_private(s, DpSettings(noise_multiplier=1.0, clipping_norm=0.2, delta=1e-5))
    msgs = s.configure_train(1, ArrayRecord(dict(unet.state_dict())), {"server-round": 1}, Grid(), available=2)
    assert all(m.content["config"]["clipping_norm"] == 0.2 for m in msgs)
    torch.manual_seed(1)
    a, b = site_state(unet, 0.01, 5), site_state(unet, 0.03, 7)
    metrics = {"num-examples": 10, "train-loss": 0.5}
    out = s.aggregate_train(1, [reply(11, a, metrics), reply(12, b, {**metrics, "num-examples": 30})])
    assert out.arrays is not None and out.rejected == []
    state = out.arrays.to_torch_state_dict()
    assert set(state) == set(unet.state_dict())
    key = max(dp_covered(s.template), key=lambda k: unet.state_dict()[k].numel())
    noise = state[key].numpy() - (a[key] + b[key]).numpy() / 2
    assert np.std(noise) == pytest.approx(1.0 * 0.2 / 2, rel=0.15)  # z·C/sites
    assert privacy_report(s)["rounds_released"] == 1
