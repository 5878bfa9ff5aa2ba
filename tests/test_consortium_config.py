"""consortium.yaml validation: every mistake names its key; to_run_config matches the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from server.consortium import (
    STRATEGY_NAMES,
    ConsortiumConfig,
    consortium_yaml_text,
    load_consortium,
    parse_consortium,
)
from shared.config import ConfigError

pytestmark = pytest.mark.timeout(30)
REPO = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return yaml.safe_load(consortium_yaml_text("Test Net", "fedrad.example.org:9443"))


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_consortium(data, "consortium.yaml")
    return str(exc.value)


def test_documented_template_is_valid_and_commented() -> None:
    text = consortium_yaml_text("Test Net", "fedrad.example.org:9443")
    cfg = parse_consortium(yaml.safe_load(text))
    assert cfg.name == "Test Net" and cfg.port == 9443 and cfg.host == "fedrad.example.org"
    assert cfg.strategy.name == "fedavg"
    for strategy in STRATEGY_NAMES:  # every strategy is documented in the file
        assert strategy in text
    assert text.count("#") > 20


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"local_epoch": 3}, "'local_epoch'"),
        ({"task": {"classes": ["a", "b"], "image_siz": 64}}, "'task.image_siz'"),
        ({"strategy": {"name": "fedprox", "proximal_m": 0.1}}, "'strategy.proximal_m'"),
        ({"strategy": {"name": "fedavg", "eta": 0.1}}, "'strategy.eta'"),  # FedAdam's parameter under FedAvg
    ],
)
def test_unknown_key_is_named(patch: dict, key: str) -> None:
    msg = _error({**_base(), **patch})
    assert "unknown key" in msg and key in msg


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"rounds": "many"}, "'rounds'"),
        ({"min_sites": 0}, "'min_sites'"),
        ({"lr": -1}, "'lr'"),
        ({"address": "no-port"}, "'address'"),
        ({"task": {"classes": ["only-one"]}}, "'task.classes'"),
        ({"strategy": {"name": "fedfancy"}}, "'strategy.name'"),
        ({"site_optimizer": "keep"}, "'site_optimizer'"),
        ({"average_last_rounds": -2}, "'average_last_rounds'"),
    ],
)
def test_wrong_value_is_named(patch: dict, key: str) -> None:
    assert key in _error({**_base(), **patch})


@pytest.mark.parametrize(
    ("strategy", "good", "bad"),
    [
        ("fedprox", {"proximal_mu": 0.1}, {"proximal_mu": -0.1}),
        ("fedadam", {"eta": 0.05, "eta_l": 0.01, "beta_1": 0.8, "beta_2": 0.9, "tau": 1e-4}, {"beta_1": 1.0}),
        ("fedyogi", {"eta": 0.02, "tau": 1e-3}, {"eta": 0}),
        ("fedtrimmedavg", {"beta": 0.1}, {"beta": 0.5}),
        ("krum", {"num_malicious_nodes": 1}, {"num_malicious_nodes": -1}),
        ("fedmedian", {}, {"beta": 0.1}),
        ("fedbn", {}, {"proximal_mu": 0.1}),
        ("fedbn", {"server_momentum": 0.5}, {"server_momentum": 1.0}),
        ("fedavgm", {"server_learning_rate": 1.5, "server_momentum": 0.5}, {"server_learning_rate": 0}),
        ("fedavg", {}, {"num_malicious_nodes": 1}),
    ],
)
def test_strategy_parameters_validated_per_strategy(strategy: str, good: dict, bad: dict) -> None:
    cfg = parse_consortium({**_base(), "min_sites": 5, "strategy": {"name": strategy, **good}})  # krum f=1: n ≥ 5
    params = json.loads(cfg.to_run_config()["strategy-params"])
    assert cfg.strategy.name == strategy
    assert {k: params[k] for k in good} == good
    (bad_key,) = bad
    assert f"'strategy.{bad_key}'" in _error({**_base(), "strategy": {"name": strategy, **bad}})


def test_strategy_defaults_are_flowers() -> None:
    """Defaults match flwr.serverapp.strategy's, so omitting a parameter means Flower's default."""
    import inspect

    from flwr.serverapp import strategy as fs

    for name, cls in (
        ("fedadam", fs.FedAdam),
        ("fedyogi", fs.FedYogi),
        ("fedtrimmedavg", fs.FedTrimmedAvg),
        ("krum", fs.Krum),
    ):
        params = parse_consortium({**_base(), "min_sites": 3, "strategy": name}).strategy.params()  # krum f=0: n ≥ 3
        sig = inspect.signature(cls.__init__).parameters
        assert params == {k: sig[k].default for k in params}, name


@pytest.mark.parametrize(("f", "min_sites", "need"), [(0, 2, 3), (1, 3, 5), (1, 4, 5), (2, 6, 7)])
def test_krum_refuses_fewer_sites_than_it_needs_to_tolerate_f(f: int, min_sites: int, need: int) -> None:
    """Krum tolerates f hostile sites only with n ≥ 2f + 3 (below, honest and hostile scores can tie)."""
    msg = _error({**_base(), "min_sites": min_sites, "strategy": {"name": "krum", "num_malicious_nodes": f}})
    assert (
        f"krum with num_malicious_nodes: {f} needs at least {need} sites (n ≥ 2f + 3); "
        f"min_sites is {min_sites}: raise min_sites to {need} or use fedmedian/fedtrimmedavg"
    ) in msg
    cfg = parse_consortium({**_base(), "min_sites": need, "strategy": {"name": "krum", "num_malicious_nodes": f}})
    assert cfg.min_sites == need and cfg.strategy.num_malicious_nodes == f
    assert parse_consortium({**_base(), "min_sites": min_sites, "strategy": "fedmedian"}).min_sites == min_sites


def test_to_run_config_matches_contract_and_pyproject(tmp_path: Path) -> None:
    import tomllib

    cfg = parse_consortium(
        {
            **_base(),
            "rounds": 7,
            "strategy": {"name": "fedprox", "proximal_mu": 0.05},
            "task": {"classes": ["normal", "nodule"], "image_size": 32, "model": "smallcnn"},
        }
    )
    rc = cfg.to_run_config(run_dir=tmp_path / "runs" / "r1", resume=True)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(rc) == set(declared)  # Flower refuses run-config keys the app does not declare
    for key, value in rc.items():
        assert type(value) is type(declared[key]), key
    assert rc["num-server-rounds"] == 7 and rc["strategy"] == "fedprox"
    assert json.loads(rc["strategy-params"]) == {"proximal_mu": 0.05}
    assert rc["classes"] == "normal,nodule" and rc["image-size"] == 32
    assert rc["run-dir"] == str((tmp_path / "runs" / "r1").resolve()) and rc["resume"] is True
    assert rc["consortium"] == "Test Net"
    assert rc["site-optimizer"] == "reset"
    assert parse_consortium({**_base(), "site_optimizer": "carry"}).to_run_config()["site-optimizer"] == "carry"
    assert rc["average-last-rounds"] == 0
    assert parse_consortium({**_base(), "average_last_rounds": 5}).to_run_config()["average-last-rounds"] == 5


def test_load_consortium_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="consortium.yaml: not found"):
        load_consortium(tmp_path)
    (tmp_path / "consortium.yaml").write_text("name: x\naddress: h:1\nroundz: 3\n")
    with pytest.raises(ConfigError, match=r"consortium\.yaml: unknown key 'roundz'"):
        load_consortium(tmp_path)
    (tmp_path / "consortium.yaml").write_text("name: x\naddress: h:1\nstrategy: fedmedian\n")
    assert load_consortium(tmp_path).strategy.name == "fedmedian"
    assert isinstance(ConsortiumConfig(name="x", address="h:1"), ConsortiumConfig)


def test_segmentation_trains_with_fedprox_and_a_carried_optimizer() -> None:
    """One training loop for every task: the proximal term and the carried optimizer are not classification's alone."""
    cfg = parse_consortium(
        {
            **_base(),
            "site_optimizer": "carry",
            "strategy": {"name": "fedprox", "proximal_mu": 0.1},
            "task": {"type": "segmentation", "labels": ["nodule"], "model": "unet"},
        }
    )
    rc = cfg.to_run_config()
    assert rc["site-optimizer"] == "carry" and rc["strategy"] == "fedprox" and rc["labels"] == "nodule"
