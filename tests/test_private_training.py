"""Per-image differential privacy: DP-SGD training, the site's own ε ledger, config and server rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from client.outbound_guard import guard_reply
from client.privacy_ledger import ImageDp, PrivacyLedger, train_private_round
from client.worker_protocol import SiteRefusal
from server.strategies.metrics import aggregate_metrics
from server.strategies.validation import template_of, validate_train_reply
from shared.config import ConfigError
from shared.models import build_model
from shared.private_training import epsilon_after, noise_for_epsilon, steps_per_epoch, train_model_private
from shared.tasks import TaskSpec
from shared.tasks.classification.evaluation import auc_score
from shared.training import TrainConfig, seed_everything
from tests.test_training import blob_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_noise_is_calibrated_to_the_target_epsilon() -> None:
    z = noise_for_epsilon(8.0, n=200, batch_size=32, steps=60, delta=1e-5)
    assert 7.9 <= epsilon_after(z, 200, 32, 60, 1e-5) <= 8.0
    assert noise_for_epsilon(8.0, 200, 32, 600, 1e-5) > z  # more steps need more noise for the same ε
    assert noise_for_epsilon(2.0, 200, 32, 60, 1e-5) > z  # a smaller ε needs more noise
    assert steps_per_epoch(200, 32) == 6 and steps_per_epoch(10, 32) == 1


def test_dp_sgd_learns_at_epsilon_8_and_not_under_overwhelming_noise() -> None:
    train, test = blob_dataset(160, 32, seed=0), blob_dataset(80, 32, seed=1)
    cfg = TrainConfig(epochs=8, batch_size=32, lr=3e-3)
    z = noise_for_epsilon(8.0, len(train), 32, cfg.epochs * steps_per_epoch(len(train), 32), 1e-5)
    seed_everything(0)
    private = build_model("smallcnn-gn", 2, 32)
    history = train_model_private(private, train, cfg, noise_multiplier=z, clipping_norm=1.0)
    assert len(history) == 8 and all(np.isfinite(h["loss"]) for h in history)
    seed_everything(0)
    drowned = build_model("smallcnn-gn", 2, 32)
    train_model_private(drowned, train, cfg, noise_multiplier=500.0, clipping_norm=1.0)
    good, bad = auc_score(private, test), auc_score(drowned, test)
    print(f"\nper-image DP on blobs: ε=8 (z={z:.2f}) AUC {good:.3f}; z=500 AUC {bad:.3f}")
    assert good > 0.9 and bad < good - 0.15
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in private.parameters())  # hooks gone


def test_batchnorm_model_is_refused_with_the_model_to_use() -> None:
    with pytest.raises(ValueError, match="smallcnn-gn"):
        train_model_private(build_model("smallcnn", 2, 32), blob_dataset(16, 32), TrainConfig(epochs=1), 1.0, 1.0)


def _dp(target: float = 8.0, rounds: int = 3) -> ImageDp:
    return ImageDp.from_config(
        {
            "dp-level": "image",
            "dp-target-epsilon": target,
            "dp-clipping-norm": 1.0,
            "dp-delta": 1e-5,
            "num-server-rounds": rounds,
        }
    )


def test_ledger_composes_rounds_to_the_target_and_survives_a_restart(tmp_path) -> None:
    path = tmp_path / "privacy" / "run-site.json"
    ledger = PrivacyLedger(path, n=120, batch_size=32, delta=1e-5)
    spent = []
    for rnd in (1, 2, 3):
        plan = ledger.plan(rnd, _dp(), epochs=2)
        ledger.record(plan)
        spent.append(plan.epsilon_after)
        ledger = PrivacyLedger(path, n=120, batch_size=32, delta=1e-5)  # a restarted worker reads the file
        assert ledger.epsilon() == pytest.approx(plan.epsilon_after)
    assert spent[0] < spent[1] < spent[2] and 7.9 <= spent[2] <= 8.0, spent
    assert [r["round"] for r in json.loads(path.read_text())["rounds"]] == [1, 2, 3]


def test_ledger_refuses_past_the_sites_cap_and_a_changed_training_set(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, n=120, batch_size=32, delta=1e-5)
    ledger.record(ledger.plan(1, _dp(rounds=2), epochs=2, max_epsilon=8.5))
    ledger.record(ledger.plan(2, _dp(rounds=2), epochs=2, max_epsilon=8.5))
    with pytest.raises(SiteRefusal, match="round 3 would bring its per-image epsilon to .* above its max_epsilon 8.5"):
        ledger.plan(3, _dp(rounds=2), epochs=2, max_epsilon=8.5)  # a server asking for more rounds than it announced
    with pytest.raises(SiteRefusal, match="training set or batch size changed"):
        PrivacyLedger(path, n=121, batch_size=32, delta=1e-5)


def test_incomplete_image_dp_settings_are_a_refusal_not_a_crash() -> None:
    assert ImageDp.from_config({"dp-level": "site"}) is None
    with pytest.raises(SiteRefusal, match="per-image DP settings"):
        ImageDp.from_config({"dp-level": "image", "dp-target-epsilon": 8.0})


def test_private_round_reports_only_epsilon_and_noise(tmp_path) -> None:
    model = build_model("smallcnn-gn", 2, 32)
    history, metrics = train_private_round(
        model, blob_dataset(40, 32), TrainConfig(epochs=1, batch_size=16), _dp(rounds=1), 1, tmp_path / "l.json"
    )
    assert set(metrics) == {"dp-epsilon", "dp-noise-multiplier"} and 7.9 <= metrics["dp-epsilon"] <= 8.0
    guarded = guard_reply(
        "train",
        task=TaskSpec("classification", ("normal", "nodule"), "smallcnn-gn", 16),
        incoming={},
        arrays=None,
        metrics={"num-examples": 40, **metrics},
        min_count=10,
    )
    assert guarded.metrics["dp-epsilon"] == metrics["dp-epsilon"] and not guarded.violations


def test_server_requires_the_sites_epsilon_and_reports_the_least_private_site() -> None:
    model = build_model("smallcnn-gn", 2, 32)
    template = template_of(model.state_dict())
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in model.state_dict().items()})

    def content(metrics: dict) -> RecordDict:
        return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})

    _, problem = validate_train_reply(content({"num-examples": 30}), template, ("dp-epsilon",))
    assert problem == "metric 'dp-epsilon' is missing"
    clean, problem = validate_train_reply(content({"num-examples": 30, "dp-epsilon": 7.5}), template, ("dp-epsilon",))
    assert problem is None and clean["dp-epsilon"] == 7.5
    replies = [
        RecordDict({"metrics": MetricRecord({"num-examples": n, "dp-epsilon": e, "dp-noise-multiplier": z})})
        for n, e, z in ((10, 6.0, 1.3), (90, 7.9, 0.9))
    ]
    out = aggregate_metrics(replies)
    assert out["dp-epsilon"] == 7.9 and out["dp-noise-multiplier"] == 0.9  # not weighted means


def test_consortium_image_dp_needs_a_target_and_a_batchnorm_free_model() -> None:
    from server.consortium import parse_consortium

    base = {"name": "C", "address": "h:9443", "task": {"classes": ["normal", "nodule"], "model": "smallcnn-gn"}}
    cfg = parse_consortium({**base, "privacy": {"dp": {"level": "image", "target_epsilon": 8, "clipping_norm": 1.0}}})
    run = cfg.to_run_config()
    assert (run["dp-level"], run["dp-target-epsilon"], run["dp-noise-multiplier"]) == ("image", 8.0, 0.0)
    with pytest.raises(ConfigError, match="task.model .*smallcnn-gn"):
        parse_consortium(
            {
                **base,
                "task": {"classes": ["a", "b"], "model": "smallcnn"},
                "privacy": {"dp": {"level": "image", "target_epsilon": 8, "clipping_norm": 1.0}},
            }
        )
    with pytest.raises(ConfigError, match="needs target_epsilon"):
        parse_consortium({**base, "privacy": {"dp": {"level": "image", "noise_multiplier": 1.0, "clipping_norm": 1.0}}})
    with pytest.raises(ConfigError, match="needs noise_multiplier"):
        parse_consortium({**base, "privacy": {"dp": {"clipping_norm": 1.0}}})


def test_site_refuses_a_target_above_its_cap_and_counts_image_dp_as_dp() -> None:
    from client.app import _privacy_refusal

    config = {"dp-level": "image", "dp-target-epsilon": 8.0}
    assert _privacy_refusal({"require-dp": 1, "max-epsilon": 10.0}, config, secure=False) is None
    refused = _privacy_refusal({"require-dp": 1, "max-epsilon": 4.0}, config, secure=False)
    assert refused and "per-image target epsilon 8 is above its max_epsilon 4" in refused[0]
    assert _privacy_refusal({"require-dp": 1}, {}, secure=False) is not None  # no DP at all


def test_coordinator_round_row_says_per_image_epsilon() -> None:
    from server.coordinator import round_row

    row = {
        "round": 1,
        "sites_answered": 2,
        "sites_failed": 0,
        "seconds": 9.0,
        "train": {},
        "privacy": {"epsilon": 5.54, "delta": 1e-5, "level": "image"},
    }
    assert "DP ε=5.54 per image, largest site (δ=1e-05)" in round_row(row).metrics


def test_head_only_dp_keeps_the_pretrained_features_and_their_statistics() -> None:
    from shared.training import train_model

    seed_everything(0)
    model = build_model("smallcnn", 2, 32)  # BatchNorm: fine here, the features are frozen
    train_model(model, blob_dataset(64, 32), TrainConfig(epochs=2, batch_size=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model_private(
        model, blob_dataset(48, 32, seed=2), TrainConfig(epochs=2, batch_size=16), 1.0, 1.0, layers="head"
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"classifier.weight", "classifier.bias"}  # BN running statistics never saw the private images
    assert all(p.requires_grad for p in model.parameters())


def test_head_only_dp_needs_pretrained_weights(tmp_path) -> None:
    from server.consortium import parse_consortium

    dp = {"level": "image", "layers": "head", "target_epsilon": 8, "clipping_norm": 1.0}
    base = {"name": "C", "address": "h:9443", "privacy": {"dp": dp}}
    with pytest.raises(ConfigError, match="set task.init_weights"):
        parse_consortium({**base, "task": {"classes": ["normal", "nodule"]}})
    (tmp_path / "public.pt").write_bytes(b"x")
    cfg = parse_consortium(
        {**base, "task": {"classes": ["normal", "nodule"], "init_weights": str(tmp_path / "public.pt")}}
    )
    assert cfg.to_run_config()["dp-layers"] == "head"
