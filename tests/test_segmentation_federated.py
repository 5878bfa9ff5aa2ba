"""Segmentation as a federated task, without processes: config, metric keys at the site and the server,
UNet through the strategies, and segmentation model files and checkpoints.

The 2-site TLS federation with real processes is tests/integration/test_segmentation_federation.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.outbound_guard import guard_reply
from server.app import RunConfigError, RunSettings
from server.checkpoints import RunDir, RunTask
from server.consortium import consortium_yaml_text, parse_consortium
from server.strategies import build_strategy
from server.strategies.metrics import aggregate_metrics
from server.strategies.validation import validate_eval_reply
from shared.config import ConfigError
from shared.modelfile import load_model_file
from shared.tasks import TaskSpec, get_task
from shared.tasks.segmentation.metric_keys import metric_keys
from tests.test_strategies import reply, task_identity  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.timeout(60)
LABELS = ["nodule", "lung"]
SEG_TASK = {"type": "segmentation", "labels": LABELS, "image_size": 32}
SEG_SPEC = TaskSpec("segmentation", tuple(LABELS), "unet", 32)
BASE = {"name": "Seg Net", "address": "fedrad.example.org:9443"}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_consortium({**BASE, **data}, "consortium.yaml")
    return str(exc.value)


def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_task("segmentation").build_model("unet", len(LABELS), 32)


# ------------------------------------------------------------------ consortium.yaml and the run config
def test_segmentation_task_goes_into_the_run_config_and_classification_stays_the_default() -> None:
    cfg = parse_consortium({**BASE, "task": SEG_TASK})
    assert (cfg.task.type, cfg.task.model, cfg.task.labels) == ("segmentation", "unet", LABELS)  # unet is the default
    run = cfg.to_run_config(run_dir="/tmp/r")
    assert (run["task-type"], run["labels"], run["model"], run["image-size"]) == (
        "segmentation",
        "nodule,lung",
        "unet",
        32,
    )
    s = RunSettings.from_run_config(run)
    assert (s.task.type, list(s.task.outputs), s.model) == ("segmentation", LABELS, "unet")
    task = TaskSpec.from_run_config(run)
    assert task.type == "segmentation" and list(task.outputs) == LABELS
    default = parse_consortium(BASE).to_run_config(run_dir="/tmp/r")  # an existing config is unchanged
    assert (default["task-type"], default["labels"], default["model"]) == ("classification", "", "smallcnn")
    assert RunSettings.from_run_config(default).task.outputs == ("normal", "nodule")
    parse_consortium(__import__("yaml").safe_load(consortium_yaml_text("Seg Net", "h:1")))  # the template still parses


@pytest.mark.parametrize(
    ("task", "key", "words"),
    [
        ({"type": "segmentation"}, "task.labels", "needs its segment names"),
        ({**SEG_TASK, "model": "smallcnn"}, "task.model", "not a segmentation architecture; use one of unet"),
        ({"model": "unet"}, "task.model", "not a classification architecture"),
        ({"labels": LABELS}, "task.labels", "not used by a classification task"),
        ({**SEG_TASK, "classes": ["a", "b"]}, "task.classes", "names its outputs in task.labels"),
        ({**SEG_TASK, "labels": ["left-lung"]}, "task.labels", "letters, digits"),
        ({**SEG_TASK, "labels": ["lung", "lung"]}, "task.labels", "unique"),
        ({"type": "detection"}, "task.type", "known: classification, multilabel, segmentation"),
    ],
)
def test_a_wrong_segmentation_task_names_the_key(task: dict, key: str, words: str) -> None:
    msg = _error({"task": task})
    assert f"key '{key}'" in msg and words in msg, msg


def test_fedprox_trains_segmentation_too() -> None:
    """One training loop for every task: the proximal term is no longer classification's alone."""
    cfg = parse_consortium({**BASE, "task": SEG_TASK, "strategy": "fedprox"})
    assert cfg.to_run_config(run_dir="/tmp/r")["strategy"] == "fedprox"


@pytest.mark.parametrize(
    ("change", "key"),
    [({"labels": ""}, "'labels'"), ({"model": "smallcnn"}, "'model'"), ({"task-type": "boxes"}, "'task-type'")],
)
def test_run_config_task_errors_name_the_key(change: dict, key: str) -> None:
    run = {**parse_consortium({**BASE, "task": SEG_TASK}).to_run_config(run_dir="/tmp/r"), **change}
    with pytest.raises(RunConfigError, match=key):
        RunSettings.from_run_config(run)


# ------------------------------------------------------------------ the metric keys: site guard, server validation, aggregation
def test_guard_passes_the_tasks_segmentation_aggregates_and_nothing_per_case() -> None:
    metrics = {
        "num-examples": 12,
        "loss": 0.5,
        "dice-mean": 0.6,
        "dice-lung": 0.9,
        "dice-lung-ci-low": 0.85,
        "dice-lung-ci-high": 0.93,
        "hd95-mm-lung": 2.0,
        "hd95-mm-lung-examples": 12,
        "dice-nodule": 0.3,
        "hd95-px-nodule": 9.0,
        "hd95-px-nodule-examples": 4,
        "hd95-lung": 2.0,  # the unitless key of old: not a key any more
        "hd95-cm-lung": 0.2,
        "dice-case17": 0.2,
        "dice-lung-case-3": 0.1,
        "dice-heart": float("nan"),
        "dice-lung-cases": [0.9, 0.8],
    }
    g = guard_reply("evaluate", incoming={}, arrays=None, metrics=metrics, min_count=10, task=SEG_SPEC)
    assert set(g.metrics) == {
        "num-examples",
        "loss",
        "dice-mean",
        "dice-lung",
        "dice-lung-ci-low",
        "dice-lung-ci-high",
        "hd95-mm-lung",
        "hd95-mm-lung-examples",
        "dice-nodule",
        "hd95-px-nodule-examples",
    }
    dropped = {d.item for d in g.violations}
    assert dropped == {
        "metric:dice-case17",
        "metric:dice-lung-case-3",
        "metric:dice-heart",
        "metric:dice-lung-cases",
        "metric:hd95-lung",
        "metric:hd95-cm-lung",
    }
    withheld = {d.item for d in g.decisions if d.action == "withhold"}
    assert withheld == {"metric:hd95-px-nodule"}  # HD95 over 4 cases < min_count
    small = guard_reply("evaluate", incoming={}, arrays=None, metrics={**metrics, "num-examples": 5}, task=SEG_SPEC)
    assert not {k for k in small.metrics if k.startswith("dice-")}  # Dice over 5 held-out cases is withheld
    classification = guard_reply(
        "evaluate",
        incoming={},
        arrays=None,
        metrics={"num-examples": 20, "dice-lung": 0.9},
        task=TaskSpec("classification", ("normal", "nodule"), "smallcnn", 32),
    )
    assert "dice-lung" not in classification.metrics  # no segmentation keys outside a segmentation task


def test_server_accepts_and_aggregates_segmentation_metrics() -> None:
    site_a = {
        "num-examples": 30,
        "loss": 0.4,
        "dice-mean": 0.5,
        "dice-lung": 0.9,
        "dice-lung-ci-low": 0.8,
        "dice-lung-ci-high": 0.95,
        "hd95-mm-lung": 2.0,
        "hd95-mm-lung-examples": 30,
    }
    site_b = {
        "num-examples": 10,
        "loss": 0.8,
        "dice-mean": 0.3,
        "dice-lung": 0.5,
        "hd95-mm-lung": 6.0,
        "hd95-mm-lung-examples": 10,
        "hd95-px-lung": 4.0,  # site b also has images without a pixel spacing: a separate figure
        "hd95-px-lung-examples": 5,
    }
    clean, problem = validate_eval_reply(reply(1, None, site_a).content)
    assert problem is None and clean == site_a
    assert set(metric_keys(["lung"])) >= set(site_a) - {"num-examples", "loss"}
    assert "must lie in [0, 1]" in validate_eval_reply(reply(1, None, {**site_b, "dice-lung": 1.5}).content)[1]
    assert "must not be negative" in validate_eval_reply(reply(1, None, {**site_b, "hd95-mm-lung": -1.0}).content)[1]
    out = aggregate_metrics([reply(1, None, site_a).content, reply(2, None, site_b).content])
    assert out["dice-lung"] == pytest.approx((0.9 * 30 + 0.5 * 10) / 40)
    assert out["hd95-mm-lung"] == pytest.approx((2.0 * 30 + 6.0 * 10) / 40) and out["hd95-mm-lung-examples"] == 40
    assert out["hd95-px-lung"] == 4.0 and out["hd95-px-lung-examples"] == 5  # never averaged with millimetres
    assert out["num-examples"] == 40 and "dice-lung-ci-low" not in out  # a site's interval is never averaged


# ------------------------------------------------------------------ UNet through the strategies
@pytest.mark.parametrize("name", ["fedavg", "fedbn", "fedadam", "fedmedian"])
def test_strategies_aggregate_unet_updates(name: str, task_identity: None) -> None:  # noqa: F811
    model = unet()
    strategy = build_strategy(name, "{}", model, min_sites=2)
    base = model.state_dict()
    a = {k: v + 0.01 if v.is_floating_point() else v for k, v in base.items()}
    b = {k: v - 0.03 if v.is_floating_point() else v for k, v in base.items()}
    from flwr.app import ArrayRecord

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [11, 12]

    strategy.configure_train(1, ArrayRecord(base), {}, Grid(), available=2)
    metrics = {"num-examples": 10, "train-loss": 0.5, "train-s": 1.0}
    out = strategy.aggregate_train(1, [reply(11, a, metrics), reply(12, b, metrics)])
    assert out.arrays is not None and sorted(out.accepted) == [11, 12], out.rejected
    agg = out.arrays.to_torch_state_dict()
    assert set(agg) == set(base) and all(agg[k].shape == base[k].shape for k in base)
    if name in ("fedavg", "fedbn"):  # MONAI's UNet normalises with InstanceNorm without state: FedBN = FedAvg here
        key = next(k for k, v in base.items() if v.is_floating_point())
        assert torch.allclose(agg[key], base[key] - 0.01, atol=1e-6)


# ------------------------------------------------------------------ model files and checkpoints
def test_a_segmentation_round_checkpoint_is_a_segmentation_model_file(tmp_path: Path) -> None:
    model = unet()
    run = RunDir(tmp_path / "run")
    task = RunTask(TaskSpec("segmentation", tuple(LABELS), "unet", 32), "Seg Net", "fedavg", 0)
    assert run.prepare(task, resume=False) is None
    digest = run.save_round(1, model.state_dict(), task=task, num_server_rounds=2, metrics={"eval": {}}, eval_auc=0.4)
    loaded = load_model_file(tmp_path / "run" / "best.pt")
    assert (loaded.task, loaded.labels, loaded.classes, loaded.architecture) == ("segmentation", LABELS, [], "unet")
    assert loaded.weights_sha256 == digest and loaded.task_mismatch(SEG_SPEC) is None
    assert "segmentation unet" in loaded.task_mismatch(TaskSpec("classification", ("normal", "nodule"), "smallcnn", 32))
    out = loaded.model(torch.zeros(1, 1, 32, 32))
    assert tuple(out.shape) == (1, 2, 32, 32)
    point = run.prepare(task, resume=True)
    assert point is not None and point.best_auc == pytest.approx(0.4)  # best by dice-mean
    with pytest.raises(Exception, match="task_type"):
        run.prepare(RunTask(TaskSpec("classification", tuple(LABELS), "unet", 32), "Seg Net", "fedavg", 0), resume=True)


def test_model_card_describes_a_segmentation_model(tmp_path: Path) -> None:
    from server.model_card import model_card

    run = RunDir(tmp_path / "run")
    task = RunTask(TaskSpec("segmentation", tuple(LABELS), "unet", 32), "Seg Net", "fedavg", 0)
    run.prepare(task, resume=False)
    row = {
        "eval": {"num-examples": 20, "dice-mean": 0.5, "dice-lung": 0.9, "hd95-mm-lung": 2.5, "dice-nodule": 0.1},
        "sites_answered": 2,
    }
    run.save_round(1, unet().state_dict(), task=task, num_server_rounds=1, metrics=row, eval_auc=0.5)
    card = model_card(load_model_file(tmp_path / "run" / "latest.pt"), tmp_path / "run", {}, ["a", "b"], None, None)
    assert (
        "segmentation of nodule, lung" in card and "lung Dice 0.900 HD95 2.5 mm" in card and "mean Dice 0.500" in card
    )
