"""fp16 uploads: half the bytes, widened back exactly at the server, never an Inf, counters untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from server.strategies import build_strategy
from shared.compression import check_mode, compress, widen
from shared.models import build_model
from tests.test_strategies import Grid, reply, site_state, task_identity, train_metrics  # noqa: F401 - fixture


def test_fp16_halves_float_bytes_and_leaves_the_rest() -> None:
    arrays = {
        "w": np.linspace(-2, 2, 1000, dtype=np.float32),
        "n": np.array(7, dtype=np.int64),
        "big": np.array([1e6, 1.0], dtype=np.float32),
    }
    sent = compress(arrays, "fp16")
    assert sent["w"].dtype == np.float16 and sent["w"].nbytes == arrays["w"].nbytes // 2
    assert sent["n"].dtype == np.int64 and sent["big"].dtype == np.float32  # 1e6 does not fit float16: sent as is
    back = widen(sent, {"w": "float32", "n": "int64", "big": "float32"})
    assert back["w"].dtype == np.float32 and np.abs(back["w"] - arrays["w"]).max() < 2e-3
    assert widen(arrays, {"w": "float32"}) is None  # nothing compressed
    assert compress(arrays, "none")["w"] is arrays["w"]
    with pytest.raises(ValueError, match="none, fp16"):
        check_mode("int4")


def test_the_server_aggregates_fp16_replies_like_float32(task_identity: None) -> None:  # noqa: F811
    torch.manual_seed(0)
    model = build_model("smallcnn", 2, 16)
    states = [site_state(model, off, 3) for off in (0.01, 0.03)]
    small = [
        {k: torch.from_numpy(v) for k, v in compress({k: t.numpy() for k, t in st.items()}, "fp16").items()}
        for st in states
    ]
    assert small[0]["classifier.weight"].dtype == torch.float16
    results = []
    for replies in (states, small):
        s = build_strategy("fedavg", "{}", model, min_sites=2)
        s.configure_train(1, ArrayRecord(model.state_dict()), {}, Grid(), available=2)
        out = s.aggregate_train(1, [reply(11, replies[0], train_metrics(4)), reply(12, replies[1], train_metrics(4))])
        assert out.accepted == [11, 12], out.rejected
        results.append(out.arrays.to_torch_state_dict())
    for key, exact in results[0].items():
        assert results[1][key].dtype == exact.dtype
        assert torch.allclose(results[1][key].double(), exact.double(), atol=2e-3), key
