"""SecAgg+ settings, the site's protocol guard and requirement, and Flower's masking math at FedRad's settings.

The federation test (tests/integration/test_federated_training.py) runs the
whole protocol over TLS and compares the result with plain FedAvg; these
tests pin the pieces around it without a network.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage

from client.app import _privacy_refusal
from client.secure_aggregation import SecureAggregationError, _check_range, guard_secure_reply
from client.site_config import SiteFileConfig, site_node_config
from server.app import RunConfigError, RunSettings
from server.consortium import consortium_yaml_text, parse_consortium
from server.secure_aggregation import SecAggSettings
from shared.config import ConfigError

pytestmark = pytest.mark.timeout(60)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _consortium(**privacy: object) -> dict:
    base = yaml.safe_load(consortium_yaml_text("Test Net", "fedrad.example.org:9443"))
    return {**base, "privacy": privacy}


def test_consortium_secure_aggregation_reaches_the_run_config() -> None:
    cfg = parse_consortium(_consortium(secure_aggregation={"threshold_fraction": 0.8}))
    settings = SecAggSettings.from_json(cfg.to_run_config(run_dir="/tmp/r")["secagg"])
    assert settings == SecAggSettings(threshold_fraction=0.8)
    assert SecAggSettings.from_json(parse_consortium(_consortium()).to_run_config()["secagg"]) is None  # off by default


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum"])
def test_secure_aggregation_refuses_strategies_that_need_single_updates(strategy: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_consortium({**_consortium(secure_aggregation={}), "strategy": {"name": strategy}})
    assert "secure_aggregation" in str(exc.value) and strategy in str(exc.value)
    with pytest.raises(RunConfigError, match="secagg"):
        RunSettings.from_run_config({"run-dir": "/tmp/r", "classes": "a,b", "strategy": strategy, "secagg": "{}x"})
    with pytest.raises(RunConfigError, match=strategy):
        RunSettings.from_run_config(
            {"run-dir": "/tmp/r", "classes": "a,b", "strategy": strategy, "secagg": '{"max_weight": 10}'}
        )


def test_unknown_secure_aggregation_key_is_named() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        parse_consortium(_consortium(secure_aggregation={"threshold": 0.5}))
    with pytest.raises(ValueError, match="keys among"):
        SecAggSettings.from_json('{"threshold": 0.5}')


def test_site_that_requires_secure_aggregation_refuses_a_plain_round(tmp_path) -> None:  # noqa: ANN001
    node = {"require-secagg": 1}
    refusal = _privacy_refusal(node, {}, secure=False)
    assert refusal is not None and "requires secure aggregation" in refusal[0]
    assert _privacy_refusal(node, {}, secure=True) is None
    assert _privacy_refusal({}, {}, secure=False) is None
    cfg = SiteFileConfig(
        site_name="site-a",
        server_address="h:1",
        ca_cert=tmp_path / "ca.crt",
        private_key=tmp_path / "k",
        data=tmp_path,
        labels=tmp_path / "l.csv",
        classes=["a", "b"],
        privacy={"require_secure_aggregation": True},
    )
    assert site_node_config(tmp_path / "site.yaml", cfg)["require-secagg"] == 1


def _stage_reply(fields: dict, **records: object) -> RecordDict:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(fields)})
    for name, record in records.items():
        content[name] = record
    return content


def test_protocol_guard_passes_the_protocol_fields_only() -> None:
    keys = {Key.PUBLIC_KEY_1: b"\x01" * 32, Key.PUBLIC_KEY_2: b"\x02" * 32}
    assert guard_secure_reply(Stage.SETUP, _stage_reply(keys), None) == []
    leaky = guard_secure_reply(Stage.SETUP, _stage_reply({**keys, "patient": "RS0160162"}), None)
    assert leaky and "'patient'" in leaky[0]
    extra = guard_secure_reply(Stage.SETUP, _stage_reply(keys, extra=ConfigRecord({"file": "IMG0001.dcm"})), None)
    assert extra == ["record 'extra' is not part of stage setup"]
    arrays = guard_secure_reply(
        Stage.UNMASK, _stage_reply({Key.NODE_ID_LIST: [1], Key.SHARE_LIST: [b"s"]}, preds=ArrayRecord({})), None
    )
    assert arrays == ["array record 'preds' must not leave in a secure round"]  # even an empty one
    wrong_type = guard_secure_reply(Stage.UNMASK, _stage_reply({Key.NODE_ID_LIST: ["a"], Key.SHARE_LIST: [b"s"]}), None)
    assert wrong_type and Key.NODE_ID_LIST in wrong_type[0]


def test_protocol_guard_checks_the_masked_vectors() -> None:
    vectors = [_npy(np.array([5], np.int64)), _npy(np.zeros((4, 3), np.int64))]
    fitres = {
        "fitres.metrics": ConfigRecord({"num-examples": 40}),
        "fitres.num_examples": MetricRecord({"num_examples": 40}),
        "fitres.status": ConfigRecord({"code": 0, "message": ""}),
        "fitres.parameters": ArrayRecord({}),
    }
    good = _stage_reply({Key.MASKED_PARAMETERS: vectors}, **fitres)
    assert guard_secure_reply(Stage.COLLECT_MASKED_VECTORS, good, n_arrays=1) == []
    assert (
        "2 masked vectors for a model of 2 arrays"
        in guard_secure_reply(Stage.COLLECT_MASKED_VECTORS, good, n_arrays=2)[0]
    )
    plain = _stage_reply({Key.MASKED_PARAMETERS: [vectors[0], _npy(np.zeros((4, 3), np.float32))]}, **fitres)
    assert guard_secure_reply(Stage.COLLECT_MASKED_VECTORS, plain, n_arrays=1) == [
        "masked vectors must be integer arrays"
    ]


def test_site_refuses_an_update_secagg_would_clip() -> None:
    state = RecordDict({RECORD_KEY_STATE: ConfigRecord({"clipping_range": 1.0, "max_weight": 1000.0})})
    ctx = Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})
    _check_range([np.full(3, 1.5, np.float32)], 500, ctx)  # 1.5 × 500 / 1000 = 0.75: fits
    with pytest.raises(SecureAggregationError, match="clipping_range"):
        _check_range([np.full(3, 1.5, np.float32)], 1000, ctx)


def test_flower_masking_recovers_the_weighted_mean_at_fedrad_settings() -> None:
    """Quantise, mask with pairwise masks that cancel, sum, unmask: the arithmetic the protocol rests on."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    s = SecAggSettings()
    rng = np.random.default_rng(0)
    updates = [[rng.normal(0, 0.01, (8, 5)).astype(np.float32)] for _ in range(3)]
    counts = [40, 75, 300]
    mod, qrange = 2**32, 2**22
    masked = []
    for i, (update, n) in enumerate(zip(updates, counts, strict=True)):
        q_ratio = round(n / s.max_weight * qrange)
        vec = factor_combine(q_ratio, quantize(parameters_multiply(update, q_ratio / qrange), s.clipping_range, qrange))
        for j in range(3):  # pairwise masks from a shared seed: +mask at the larger id, -mask at the smaller
            if j != i:
                mask = pseudo_rand_gen(bytes([min(i, j), max(i, j)]) * 16, mod, [v.shape for v in vec])
                vec = (parameters_addition if i > j else parameters_subtraction)(vec, mask)
        masked.append(parameters_mod(vec, mod))
    assert not np.allclose(
        masked[0][1], quantize(updates[0], s.clipping_range, qrange)[0]
    )  # a masked vector hides the update
    total = masked[0]
    for vec in masked[1:]:
        total = parameters_addition(total, vec)
    q_total, summed = factor_extract(parameters_mod(total, mod))
    mean = dequantize(summed, s.clipping_range, qrange)[0]
    mean = (mean - (len(counts) - 1) * s.clipping_range) * (qrange / q_total)
    expected = sum(n * u[0] for u, n in zip(updates, counts, strict=True)) / sum(counts)
    assert np.abs(mean - expected).max() < 1e-5
