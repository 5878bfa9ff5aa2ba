"""Strategies by name, reply validation, the BatchNorm policy and FedBN's site-local norm layers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.federated import (
    LocalNormStore,
    OptimizerStore,
    SiteData,
    evaluate_round,
    global_model,
    norm_state,
    train_round,
)
from server.strategies import STRATEGIES, StrategyError, build_strategy, parse_strategy_params
from server.strategies.metrics import aggregate_metrics
from shared.models import build_model, norm_layer_names
from shared.tasks import TaskSpec
from shared.tasks.classification.dataset import SiteDataset

pytestmark = pytest.mark.timeout(60)
TASK = TaskSpec("classification", ("normal", "nodule"), "smallcnn", 16)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TASK.model, 2, TASK.image_size)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Flower stamps instruction messages with the running task's identity; give it one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class Grid:
    """The two Grid calls a strategy's configure_* makes, for two connected sites."""

    def get_node_ids(self) -> list[int]:
        return [11, 12]


def reply(node: int, state: dict[str, torch.Tensor] | None, metrics: dict, kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if state is not None:
        content["arrays"] = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()})
    meta = Metadata(
        run_id=1,
        message_id=f"r{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"m{node}",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=kind,
    )
    return Message(content=content, metadata=meta)


def site_state(model: torch.nn.Module, offset: float, batches: int) -> dict[str, torch.Tensor]:
    """The model's weights + ``offset`` (floats), with ``num_batches_tracked`` = ``batches``."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = torch.full_like(v, batches) if k.endswith("num_batches_tracked") else v + offset
    return out


def train_metrics(n: int) -> dict:
    return {"num-examples": n, "train-loss": 0.5, "train-acc": 0.75}


# --------------------------------------------------------------------------- construction
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_from_config(name: str, model: torch.nn.Module) -> None:
    s = build_strategy(name, "{}", model, min_sites=3 if name == "krum" else 2)  # krum with f=0 needs n ≥ 3
    assert s.name == name
    assert s.bn_policy == {"fedadam": "average", "fedyogi": "average", "fedavgm": "average", "fedbn": "local"}.get(
        name, "strategy"
    )
    flower = {
        "fedavg": "FedAvg",
        "fedprox": "FedProx",
        "fedadam": "FedAdam",
        "fedyogi": "FedYogi",
        "fedmedian": "FedMedian",
        "fedtrimmedavg": "FedTrimmedAvg",
        "krum": "Krum",
        "fedbn": "FedAvgM",
        "fedavgm": "FedAvgM",
    }
    assert type(s.inner).__name__ == flower[name]


def test_strategy_params_are_checked() -> None:
    assert parse_strategy_params("FedProx", '{"proximal_mu": 0.1}') == {
        "proximal_mu": 0.1,
        "min_replies": 1,
        "max_update_ratio": 10.0,
        "max_update_norm": 0.0,
    }
    assert parse_strategy_params("fedadam", {"eta": 0.05})["eta"] == 0.05
    with pytest.raises(StrategyError, match="unknown strategy 'fedsgd'.*fedavg, fedprox"):
        parse_strategy_params("fedsgd", "{}")
    with pytest.raises(StrategyError, match=r"unknown parameter\(s\) \['etaa'\]; known: beta_1, beta_2, eta"):
        parse_strategy_params("fedadam", '{"etaa": 0.1}')
    with pytest.raises(StrategyError, match="'num_malicious_nodes' must be int"):
        parse_strategy_params("krum", '{"num_malicious_nodes": 1.5}')
    with pytest.raises(StrategyError, match="not valid JSON"):
        parse_strategy_params("fedavg", "{eta: 1}")
    with pytest.raises(StrategyError, match="must be a JSON object"):
        parse_strategy_params("fedavg", "[1]")
    with pytest.raises(StrategyError, match="beta must be in"):
        build_strategy("fedtrimmedavg", '{"beta": 0.6}', build_model("smallcnn", 2, 16), min_sites=2)


def test_krum_refuses_too_few_sites_and_warns_on_too_few_replies(
    model: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    """Krum tolerates f hostile sites only with n ≥ 2f + 3: the run config is refused below that, and a round
    that gets fewer valid replies still aggregates but says it is unprotected."""
    with pytest.raises(
        StrategyError, match=r"num_malicious_nodes: 1 needs at least 5 sites \(n ≥ 2f \+ 3\); min_sites is 3"
    ):
        build_strategy("krum", '{"num_malicious_nodes": 1}', model, min_sites=3)
    with pytest.raises(StrategyError, match="num_malicious_nodes: 0 needs at least 3 sites"):
        build_strategy("krum", "{}", model, min_sites=2)
    krum = build_strategy("krum", '{"num_malicious_nodes": 1}', model, min_sites=5)
    states = [site_state(model, off, 1) for off in (0.0, 0.01, 0.02, 0.03, 0.04)]
    with caplog.at_level("WARNING", logger="fedrad.strategy"):
        full = krum.aggregate_train(1, [reply(11 + i, st, train_metrics(5)) for i, st in enumerate(states)])
        assert full.arrays is not None and not caplog.records
        short = krum.aggregate_train(2, [reply(11 + i, st, train_metrics(5)) for i, st in enumerate(states[:3])])
    assert short.arrays is not None  # one site dropping out does not stop the run
    (warning,) = caplog.records
    assert (
        "round 2: krum with num_malicious_nodes 1 needs at least 5 valid updates (n ≥ 2f + 3), got 3"
        in warning.getMessage()
    )


def test_train_config_carries_proximal_mu_and_fedbn_flag(model: torch.nn.Module, task_identity: None) -> None:
    arrays = ArrayRecord(model.state_dict())
    prox = build_strategy("fedprox", '{"proximal_mu": 0.05}', model, min_sites=2)
    msgs = prox.configure_train(3, arrays, {"lr": 0.01}, Grid(), available=2)
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12]
    cfg = msgs[0].content["config"]
    assert cfg["proximal-mu"] == 0.05 and cfg["server-round"] == 3 and cfg["keep-local-norm"] is False
    bn = build_strategy("fedbn", None, model, min_sites=2).configure_evaluate(1, arrays, {}, Grid(), available=2)
    assert bn[0].content["config"]["keep-local-norm"] is True
    assert (
        build_strategy("fedavg", "", model, min_sites=2)
        .configure_train(1, arrays, {}, Grid(), 2)[0]
        .content["config"]["proximal-mu"]
        == 0.0
    )


# --------------------------------------------------------------------------- BN policy
def test_fedavg_weighted_mean_and_bn_counter_max(model: torch.nn.Module) -> None:
    s = build_strategy("fedavg", "{}", model, min_sites=2)
    a, b = site_state(model, 0.0, 3), site_state(model, 1.0, 7)
    out = s.aggregate_train(1, [reply(11, a, train_metrics(30)), reply(12, b, train_metrics(10))])
    assert out.accepted == [11, 12] and not out.rejected
    agg = out.arrays.to_torch_state_dict()
    w = "features.0.weight"
    assert torch.allclose(agg[w], a[w] + 0.25, atol=1e-6)  # 30:10 weights
    assert torch.allclose(agg["features.1.running_var"], a["features.1.running_var"] + 0.25)
    counter = agg["features.1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and int(counter) == 7  # max, not a float average
    assert all(agg[k].dtype == v.dtype for k, v in model.state_dict().items())
    assert out.metrics["num-examples"] == 40 and out.metrics["sites"] == 2


def test_fedadam_keeps_bn_statistics_out_of_the_optimizer(model: torch.nn.Module, task_identity: None) -> None:
    s = build_strategy("fedadam", '{"eta": 0.5}', model, min_sites=2)
    start = site_state(model, 0.0, 0)
    s.configure_train(1, ArrayRecord(start), {}, Grid(), 2)
    a, b = site_state(model, -0.4, 5), site_state(model, -0.2, 5)
    agg = s.aggregate_train(
        1, [reply(11, a, train_metrics(1)), reply(12, b, train_metrics(1))]
    ).arrays.to_torch_state_dict()
    var = "features.1.running_var"
    assert torch.allclose(agg[var], start[var] - 0.3, atol=1e-6)  # plain weighted mean: 1 - 0.3 > 0
    w = "features.0.weight"
    assert not torch.allclose(agg[w], start[w] - 0.3, atol=1e-3)  # trainable weights took an Adam step
    assert agg[w].dtype == torch.float32 and torch.isfinite(agg[w]).all()
    assert set(s.state_dict()) == {"m_t", "v_t"} and var not in s.state_dict()["m_t"]


def test_fedbn_server_step_moves_weights_but_not_bn_statistics(model: torch.nn.Module, task_identity: None) -> None:
    """FedBN with FedAvgM's server step: the shared weights go 2× the averaged update; a variance stays a mean."""
    s = build_strategy("fedbn", '{"server_learning_rate": 2.0}', model, min_sites=2)
    start = site_state(model, 0.0, 0)
    s.configure_train(1, ArrayRecord(start), {}, Grid(), 2)
    a, b = site_state(model, -0.4, 5), site_state(model, -0.2, 5)
    agg = s.aggregate_train(
        1, [reply(11, a, train_metrics(1)), reply(12, b, train_metrics(1))]
    ).arrays.to_torch_state_dict()
    assert torch.allclose(agg["features.0.weight"], start["features.0.weight"] - 0.6, atol=1e-5)  # 2 × the mean −0.3
    assert torch.allclose(
        agg["features.1.running_var"], start["features.1.running_var"] - 0.3, atol=1e-6
    )  # the mean, not a 2× step
    assert int(agg["features.1.num_batches_tracked"]) == 5
    for bad, key in (
        ('{"server_momentum": 1.0}', "server_momentum"),
        ('{"server_learning_rate": 0}', "server_learning_rate"),
    ):
        with pytest.raises(StrategyError, match=f"'fedbn': {key} must be"):
            build_strategy("fedbn", bad, model, min_sites=2)


@pytest.mark.parametrize("name", ["fedyogi", "fedavgm"])
def test_server_optimizer_state_round_trip_gives_the_same_next_round(
    name: str, model: torch.nn.Module, task_identity: None
) -> None:
    """What a resume relies on: saved moments (FedAvgM: momentum) + saved weights give exactly the uninterrupted round 2."""
    r1 = [
        reply(11, site_state(model, 0.1, 2), train_metrics(3)),
        reply(12, site_state(model, 0.3, 2), train_metrics(5)),
    ]

    def r2(base: dict) -> list[Message]:
        return [
            reply(11, site_state_from(base, 0.05), train_metrics(3)),
            reply(12, site_state_from(base, -0.02), train_metrics(5)),
        ]

    def site_state_from(base: dict, off: float) -> dict:
        return {k: (v + off if v.is_floating_point() else v) for k, v in base.items()}

    a = build_strategy(name, "{}", model, min_sites=2)
    a.configure_train(1, ArrayRecord(model.state_dict()), {}, Grid(), 2)
    w1 = a.aggregate_train(1, r1).arrays
    saved, w1_state = a.state_dict(), w1.to_torch_state_dict()
    a.configure_train(2, w1, {}, Grid(), 2)
    direct = a.aggregate_train(2, r2(w1_state)).arrays.to_torch_state_dict()

    b = build_strategy(name, "{}", model, min_sites=2)  # a fresh server process
    b.load_state_dict(saved)
    b.configure_train(2, ArrayRecord(w1_state), {}, Grid(), 2)
    resumed = b.aggregate_train(2, r2(w1_state)).arrays.to_torch_state_dict()
    assert all(torch.equal(direct[k], resumed[k]) for k in direct)
    assert not torch.equal(direct["features.0.weight"], w1_state["features.0.weight"])
    with pytest.raises(ValueError, match=f"no state '{next(iter(saved))}'"):
        build_strategy("fedavg", "{}", model, min_sites=2).load_state_dict(saved)


def test_robust_strategies_aggregate_bn_stats_too(model: torch.nn.Module) -> None:
    states = [site_state(model, off, n) for off, n in ((0.0, 1), (0.1, 9), (5.0, 4))]
    replies = lambda: [reply(10 + i, st, train_metrics(10)) for i, st in enumerate(states)]  # noqa: E731
    med = (
        build_strategy("fedmedian", "{}", model, min_sites=3).aggregate_train(1, replies()).arrays.to_torch_state_dict()
    )
    var = "features.1.running_var"
    assert torch.allclose(med[var], states[1][var]) and int(med["features.1.num_batches_tracked"]) == 9
    krum = build_strategy("krum", "{}", model, min_sites=3).aggregate_train(1, replies())
    picked = krum.arrays.to_torch_state_dict()
    assert any(all(torch.equal(picked[k], st[k]) for k in st if not k.endswith("tracked")) for st in states[:2])


# --------------------------------------------------------------------------- reply validation
def test_invalid_replies_are_rejected_and_the_round_continues(model: torch.nn.Module) -> None:
    s = build_strategy("fedavg", "{}", model, min_sites=2)
    good = site_state(model, 0.5, 1)
    nan = dict(good, **{"classifier.weight": torch.full_like(good["classifier.weight"], float("nan"))})
    shape = dict(good, **{"classifier.bias": torch.zeros(3)})
    dtype = dict(good, **{"classifier.bias": good["classifier.bias"].double()})
    missing = {k: v for k, v in good.items() if k != "classifier.bias"}
    replies = [
        reply(1, good, train_metrics(4)),
        reply(2, nan, train_metrics(4)),
        reply(3, shape, train_metrics(4)),
        reply(4, dtype, train_metrics(4)),
        reply(5, missing, train_metrics(4)),
        reply(6, good, {"num-examples": 0, "train-loss": 0.1, "train-acc": 1.0}),
        reply(7, good, {"num-examples": 4, "train-loss": float("inf"), "train-acc": 1.0}),
        reply(8, None, train_metrics(4)),
    ]
    out = s.aggregate_train(1, replies)
    reasons = dict(out.rejected)
    assert out.accepted == [1] and out.site_metrics == {1: train_metrics(4)}  # only accepted sites' own figures
    assert "NaN" in reasons[2] and "shape [3]" in reasons[3] and "dtype float64" in reasons[4]
    assert "missing ['classifier.bias']" in reasons[5] and "must be positive" in reasons[6]
    assert "finite" in reasons[7] and "ArrayRecord" in reasons[8]
    agg = out.arrays.to_torch_state_dict()
    assert torch.equal(agg["classifier.weight"], good["classifier.weight"])  # only the valid reply counted
    strict = build_strategy("fedavg", '{"min_replies": 2}', model, min_sites=2)
    assert strict.aggregate_train(1, replies).arrays is None  # too few valid replies: no new model


def test_extra_metrics_are_dropped_and_eval_auc_weighted(model: torch.nn.Module) -> None:
    s = build_strategy("fedavg", "{}", model, min_sites=2)
    e1 = {"num-examples": 10, "loss": 0.4, "accuracy": 0.9, "auc": 0.8, "auc-examples": 10, "patient-42": 1.0}
    e2 = {"num-examples": 30, "loss": 0.2, "accuracy": 0.5, "auc": 0.0, "auc-examples": 0}
    bad = {"num-examples": 5, "loss": 0.1, "accuracy": 2.0, "auc": 0.5, "auc-examples": 5}
    out = s.aggregate_evaluate(
        1,
        [
            reply(1, None, e1, MessageType.EVALUATE),
            reply(2, None, e2, MessageType.EVALUATE),
            reply(3, None, bad, MessageType.EVALUATE),
        ],
    )
    assert out.accepted == [1, 2] and "[0, 1]" in dict(out.rejected)[3]
    assert sorted(out.site_metrics) == [1, 2] and out.site_metrics[2]["auc-examples"] == 0
    assert "patient-42" not in out.site_metrics[1]  # a site's figures as validated, not as sent
    m = out.metrics
    assert m["auc"] == pytest.approx(0.8)  # the site without an AUC does not drag it to 0
    assert m["accuracy"] == pytest.approx((0.9 * 10 + 0.5 * 30) / 40) and m["num-examples"] == 40
    assert "patient-42" not in m
    none = aggregate_metrics([RecordDict({"m": MetricRecord(e2)})])
    assert "auc" not in none and none["auc-examples"] == 0


# --------------------------------------------------------------------------- FedBN at the site
def _site(n: int, shift: float, seed: int) -> SiteData:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3 + shift + y.view(-1, 1, 1, 1) * 0.2
    ds = SiteDataset(images=x, labels=y, classes=list(TASK.outputs), groups=[str(i) for i in range(n)])
    return SiteData(train=ds, held_out=ds, has_held_out=False, load_s=0.0, site_name="s", work_dir=None)  # type: ignore[arg-type]


def test_fedbn_site_keeps_its_own_norm_layers(model: torch.nn.Module, tmp_path) -> None:
    store = LocalNormStore(tmp_path, LocalNormStore.run_key("c", "/runs/1"), "site-a")
    cfg = {"local-epochs": 1, "batch-size": 8, "seed": 0, "keep-local-norm": True}
    data = _site(16, 0.5, 1)
    global_state = model.state_dict()
    s1, m1 = train_round(TASK, global_state, data, {**cfg, "server-round": 1}, store)
    assert m1["num-examples"] == 16 and set(m1) >= {"train-loss", "train-acc"}
    local = norm_state(global_model(TASK, s1, None))
    assert store.load_before(2) is not None and store.load_before(1) is None

    # Round 2: the server sends averaged weights whose norm tensors differ; the site uses its own.
    server = {k: (v * 0 + 3.0 if v.is_floating_point() else v) for k, v in s1.items()}
    m = global_model(TASK, server, store.load_before(2))
    norm = norm_layer_names(m)
    for k, v in m.state_dict().items():
        assert torch.equal(v, local[k]) if k in norm else torch.equal(v, server[k]), k
    plain = global_model(TASK, server, None)  # FedAvg sites take the server's norm layers
    assert torch.equal(plain.state_dict()["features.1.running_var"], server["features.1.running_var"])
    train_round(TASK, server, data, {**cfg, "server-round": 2}, store)
    train_round(TASK, server, data, {**cfg, "server-round": 3}, store)
    assert len(list(store.dir.glob("*.pt"))) == 2  # old rounds are pruned
    ev = evaluate_round(TASK, server, data, {**cfg, "server-round": 3}, store)
    assert ev["held-out"] == 0 and 0.0 <= ev["auc"] <= 1.0 and ev["num-examples"] == 16
    assert ev["auc-ci-low"] <= ev["auc"] <= ev["auc-ci-high"]  # the site's own bootstrap interval goes with it


def test_site_optimizer_carry_keeps_adamw_at_the_site_between_rounds(model: torch.nn.Module, tmp_path) -> None:
    store = OptimizerStore(tmp_path, OptimizerStore.run_key("c", "/runs/1"), "site-a")
    cfg = {"local-epochs": 1, "batch-size": 8, "seed": 0, "site-optimizer": "carry"}
    data = _site(16, 0.5, 1)
    state = model.state_dict()
    new, _ = train_round(TASK, state, data, {**cfg, "server-round": 1}, None, optimizer_store=store)
    assert set(new) == set(state)  # what goes back is the model's weights; the moments stay in the work dir
    after_one = store.load_before(2)
    assert store.load_before(1) is None and {int(s["step"]) for s in after_one["state"].values()} == {2}
    train_round(TASK, new, data, {**cfg, "server-round": 2}, None, optimizer_store=store)
    assert {int(s["step"]) for s in store.load_before(3)["state"].values()} == {4}
    # The server crashed after round 2 and re-runs it: the retry starts from round 1's moments, not its own.
    assert {int(s["step"]) for s in store.load_before(2)["state"].values()} == {2}
    train_round(TASK, new, data, {**cfg, "server-round": 3}, None, optimizer_store=store)
    assert sorted(p.name for p in store.dir.glob("*.pt")) == ["adamw-round-0002.pt", "adamw-round-0003.pt"]


# --------------------------------------------------------------------------- the server's round plumbing
class SlowGrid:
    """Two sites are sent a message; only node 1 ever answers."""

    def __init__(self) -> None:
        self.pulls = 0

    def get_node_ids(self) -> list[int]:
        return [1]

    def push_messages(self, messages: list) -> list[str]:
        return ["m1", "m2"]

    def pull_messages(self, ids: set[str]) -> list[Message]:
        self.pulls += 1
        return [reply(1, None, {"num-examples": 1})] if self.pulls == 2 and "m1" in ids else []


def test_a_silent_site_costs_at_most_the_round_timeout() -> None:
    from server.app import send_and_receive, wait_for_sites

    grid = SlowGrid()
    t0 = time.monotonic()
    got = send_and_receive(grid, [], timeout=0.6, poll_s=0.05)  # type: ignore[arg-type]
    assert 0.55 <= time.monotonic() - t0 < 2.0
    assert [m.metadata.src_node_id for m in got] == [1]
    t0 = time.monotonic()
    assert wait_for_sites(grid, 2, timeout=0.3, poll_s=0.05) == 1  # gives up waiting, reports who is there
    assert time.monotonic() - t0 < 2.0


def test_run_config_errors_name_the_key(tmp_path) -> None:
    from server.app import RunConfigError, RunSettings

    ok = {"run-dir": str(tmp_path), "classes": "normal,nodule", "resume": "true", "strategy": "FedAvg"}
    s = RunSettings.from_run_config(ok)
    assert s.resume is True and s.strategy == "fedavg" and s.task.outputs == ("normal", "nodule")
    with pytest.raises(RunConfigError, match="'run-dir' must be an absolute folder"):
        RunSettings.from_run_config({**ok, "run-dir": ""})
    with pytest.raises(RunConfigError, match="'num-server-rounds': expected int"):
        RunSettings.from_run_config({**ok, "num-server-rounds": "two"})
    with pytest.raises(RunConfigError, match="'classes' must list at least 2"):
        RunSettings.from_run_config({**ok, "classes": "normal"})
    with pytest.raises(RunConfigError, match="'min-sites' must be at least 1"):
        RunSettings.from_run_config({**ok, "min-sites": 0})
    assert RunSettings.from_run_config(ok).train_config(1)["site-optimizer"] == "reset"
    assert RunSettings.from_run_config({**ok, "site-optimizer": "Carry"}).train_config(1)["site-optimizer"] == "carry"
    with pytest.raises(RunConfigError, match="'site-optimizer' must be one of reset, carry"):
        RunSettings.from_run_config({**ok, "site-optimizer": "keep"})
    seg = RunSettings.from_run_config(
        {**ok, "site-optimizer": "carry", "task-type": "segmentation", "labels": "nodule", "model": "unet"}
    )  # one training loop: segmentation carries its optimizer too
    assert seg.train_config(1)["site-optimizer"] == "carry" and seg.task.outputs == ("nodule",)
    assert RunSettings.from_run_config({**ok, "average-last-rounds": 5}).average_last_rounds == 5
    with pytest.raises(RunConfigError, match="'average-last-rounds' must be a number of rounds >= 0"):
        RunSettings.from_run_config({**ok, "average-last-rounds": -1})


def test_metrics_combine_each_key_over_the_sites_that_sent_it() -> None:
    """A small site withholds its AUC (below min_count): the others' AUC still counts, weighted by their cases."""
    from flwr.app import MetricRecord, RecordDict

    from server.strategies.metrics import aggregate_metrics

    big = RecordDict(
        {"metrics": MetricRecord({"num-examples": 40, "auc": 0.8, "auc-examples": 40, "loss": 0.5, "handler-s": 1.0})}
    )
    big2 = RecordDict(
        {"metrics": MetricRecord({"num-examples": 20, "auc": 0.5, "auc-examples": 20, "loss": 0.2, "handler-s": 3.0})}
    )
    small = RecordDict({"metrics": MetricRecord({"num-examples": 4, "auc-examples": 4, "handler-s": 2.0})})
    big["metrics"]["auc-ci-low"], big["metrics"]["auc-ci-high"] = 0.7, 0.9  # a site's interval ...
    out = aggregate_metrics([big, small, big2])
    assert "auc-ci-low" not in out and "auc-ci-high" not in out  # ... is never averaged into the round's figure
    assert out["auc"] == pytest.approx(0.7) and out["loss"] == pytest.approx(0.4)
    assert out["num-examples"] == 64 and out["handler-s"] == 3.0 and out["sites"] == 3


def test_an_evaluation_with_withheld_metrics_is_valid() -> None:
    from flwr.app import MetricRecord, RecordDict

    from server.strategies.validation import validate_eval_reply

    metrics, problem = validate_eval_reply(
        RecordDict({"metrics": MetricRecord({"num-examples": 4, "auc-examples": 4})})
    )
    assert problem is None and metrics == {"num-examples": 4, "auc-examples": 4}
    _, problem = validate_eval_reply(RecordDict({"metrics": MetricRecord({"num-examples": 40, "auc": 1.5})}))
    assert problem and "auc" in problem


def test_site_session_answers_a_statistics_query_without_weights(model: torch.nn.Module) -> None:
    from client.federated import SiteSession

    data = _site(16, 0.5, 1)
    data.manufacturers = {"ACME": 16}
    session = SiteSession(TASK, data, "c", "/runs/1")
    state, stats = session.handle("query", {}, {})
    assert state is None and stats["images"] == 16 and stats["manufacturer:ACME"] == 16
    assert sum(stats[f"class:{c}"] for c in TASK.outputs) == 16
    with pytest.raises(ValueError, match="unknown message type"):
        session.handle("export", {}, {})


class ThreeSites(Grid):
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedbn", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
def test_aggregate_is_bit_identical_whatever_order_the_replies_arrive_in(
    name: str, model: torch.nn.Module, task_identity: None
) -> None:
    """Float sums depend on their order; the strategy sorts replies so a seed reproduces its run exactly."""
    torch.manual_seed(1)
    states = [
        {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        for _ in range(3)
    ]
    results = []
    for run, order in enumerate(itertools.permutations(range(3))):  # timings differ from run to run; updates do not
        replies = [
            reply(11 + i, st, {**train_metrics(7 + 13 * i), "train-s": 1.0 + run * (i + 1)})
            for i, st in enumerate(states)
        ]
        s = build_strategy(name, "{}", model, min_sites=3)
        s.configure_train(1, ArrayRecord(model.state_dict()), {}, ThreeSites(), 3)
        results.append(s.aggregate_train(1, [replies[i] for i in order]).arrays.to_torch_state_dict())
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0]), "aggregate depends on arrival order"
