"""The run folder: per-round model files, metrics history, atomic writes and resume loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from server.checkpoints import (
    CheckpointError,
    RunDir,
    RunTask,
    _atomic,
    read_metrics,
    write_json_atomic,
)
from shared.modelfile import load_model_file, weights_sha256
from shared.models import build_model
from shared.tasks import TaskSpec

pytestmark = pytest.mark.timeout(60)
TASK = RunTask(
    task=TaskSpec("classification", ("normal", "nodule"), "smallcnn", 16),
    consortium="Test Consortium",
    strategy="fedadam",
    seed=7,
)


def weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("smallcnn", 2, 16).state_dict()


def moments(x: float) -> dict[str, dict[str, np.ndarray]]:
    return {"m_t": {"a": np.full((2, 3), x, np.float32)}, "v_t": {"a": np.full((2, 3), x * x, np.float64)}}


def save(run: RunDir, rnd: int, auc: float | None, seed: int | None = None) -> str:
    return run.save_round(
        rnd,
        weights(seed if seed is not None else rnd),
        task=TASK,
        num_server_rounds=5,
        metrics={"seconds": 1.0, "train": {"train-loss": 0.5}},
        strategy_state=moments(rnd),
        eval_auc=auc,
    )


def test_every_round_writes_a_loadable_model_and_a_metrics_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.prepare(TASK, resume=False) is None
    d1 = save(run, 1, 0.6)
    d2 = save(run, 2, 0.55)
    d3 = save(run, 3, None)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == [
        "best.pt",
        "latest.pt",
        "metrics.jsonl",
        "round-0001.pt",
        "round-0002.pt",
        "round-0003.pt",
        "state.json",
        "strategy-state.pt",
    ]  # no temporary files left
    loaded = load_model_file(run.path / "round-0002.pt")
    assert loaded.weights_sha256 == d2 == weights_sha256(weights(2))
    assert loaded.provenance["kind"] == "federated" and loaded.provenance["rounds"] == 2
    assert loaded.provenance["trained_by"] == "Test Consortium" and loaded.classes == TASK.classes
    assert loaded.preprocess.image_size == 16
    assert load_model_file(run.path / "latest.pt").weights_sha256 == d3
    assert load_model_file(run.path / "best.pt").weights_sha256 == d1  # round 1 had the best AUC
    rows = read_metrics(run.path)
    assert [r["round"] for r in rows] == [1, 2, 3] and rows[2]["weights_sha256"] == d3
    assert rows[0]["strategy"] == "fedadam" and rows[0]["train"] == {"train-loss": 0.5}
    state = json.loads((run.path / "state.json").read_text())
    assert state["last_round"] == 3 and state["weights_sha256"] == d3 and state["best"]["round"] == 1
    assert state["strategy_state_file"] == "strategy-state.pt" and state["seed"] == 7


def test_resume_returns_the_exact_last_round(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.prepare(TASK, resume=False)
    save(run, 1, 0.7)
    d2 = save(run, 2, 0.65)
    # A crash after round 3's metrics line but before state.json committed it, and a torn line:
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"round": 3}) + "\n" + '{"round": 4, "sec')
    point = RunDir(tmp_path).prepare(TASK, resume=True)
    assert point is not None and point.last_round == 2 and point.weights_sha256 == d2
    assert weights_sha256(point.state_dict) == d2
    assert point.best_round == 1 and point.best_auc == pytest.approx(0.7)
    for attr, arrays in moments(2).items():
        assert np.array_equal(point.strategy_state[attr]["a"], arrays["a"])
        assert point.strategy_state[attr]["a"].dtype == arrays["a"].dtype
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]  # the uncommitted round 3 is gone
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_resume_refuses_what_does_not_fit(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.prepare(TASK, resume=False)
    save(run, 1, None)
    with pytest.raises(CheckpointError, match="already holds a run .*round 1.*resume"):
        run.prepare(TASK, resume=False)
    other = RunTask(**{**TASK.__dict__, "strategy": "fedavg"})
    with pytest.raises(CheckpointError, match="strategy='fedadam'.*'fedavg'"):
        run.prepare(other, resume=True)
    blob = bytearray((tmp_path / "round-0001.pt").read_bytes())
    blob[-300] ^= 0xFF  # damage the weights
    (tmp_path / "round-0001.pt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="cannot resume: .*round-0001.pt"):
        run.prepare(TASK, resume=True)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json: unreadable"):
        run.prepare(TASK, resume=True)


def test_resume_keeps_the_task_settings(tmp_path: Path) -> None:
    """A 3D run resumed at another voxel size would mix two preprocessings in one model: refused, naming both."""
    from shared.tasks import get_task

    def ct(spacing: str) -> RunTask:
        options = get_task("segmentation3d").check_options({"spacing": spacing})
        return RunTask(TaskSpec("segmentation3d", ("liver",), "unet", 16, options), "CT", "fedavg", 0)

    run = RunDir(tmp_path)
    run.prepare(ct("2"), resume=False)
    model = ct("2").task.build_model()
    run.save_round(1, model.state_dict(), task=ct("2"), num_server_rounds=3, metrics={})
    assert run.prepare(ct("2"), resume=True).last_round == 1
    with pytest.raises(CheckpointError, match="task_options=.*'spacing': '2x2x2'.*'spacing': '3x3x3'"):
        run.prepare(ct("3"), resume=True)
    state = json.loads((tmp_path / "state.json").read_text())
    del state["task_options"]  # a folder written before the settings were recorded still resumes
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert run.prepare(ct("3"), resume=True).last_round == 1


def test_resume_of_an_empty_folder_starts_at_round_one(tmp_path: Path) -> None:
    assert RunDir(tmp_path / "new").prepare(TASK, resume=True) is None
    assert (tmp_path / "new").is_dir()


def test_atomic_write_never_leaves_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"last_round": 1})

    def crash(fh) -> None:  # noqa: ANN001
        fh.write(b'{"last_round": 2, "half')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic(path, crash)
    assert json.loads(path.read_text()) == {"last_round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # the temporary file was removed


def test_average_last_rounds_publishes_the_mean_of_the_last_k_global_models(tmp_path: Path) -> None:
    from server.export import pick_model

    run = RunDir(tmp_path / "run")
    run.prepare(TASK, resume=False)
    for rnd in (1, 2, 3):
        run.save_round(rnd, weights(rnd), task=TASK, num_server_rounds=5, metrics={}, average_last=2)
    averaged = load_model_file(run.path / "averaged.pt")
    for key, value in averaged.model.state_dict().items():  # rounds 2 and 3, not 1
        if value.is_floating_point():
            torch.testing.assert_close(value, (weights(2)[key] + weights(3)[key]) / 2)
        else:  # BatchNorm's batch counter: the last round's
            assert torch.equal(value, weights(3)[key])
    assert averaged.provenance["rounds"] == 3 and averaged.provenance["extra"]["averaged_rounds"] == [2, 3]
    state = json.loads((run.path / "state.json").read_text())
    assert state["averaged"] == {"file": "averaged.pt", "rounds": [2, 3], "weights_sha256": averaged.weights_sha256}
    assert pick_model(run.path, best=False).name == "averaged.pt"  # what export and crossval hand out
    # Resumed without averaging: the stale averaged.pt stays on disk but is no longer the run's model.
    run.save_round(4, weights(4), task=TASK, num_server_rounds=5, metrics={})
    assert json.loads((run.path / "state.json").read_text())["averaged"] is None
    assert pick_model(run.path, best=False).name == "latest.pt"


def test_an_average_over_more_rounds_than_exist_takes_those_there_are(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.prepare(TASK, resume=False)
    run.save_round(1, weights(1), task=TASK, num_server_rounds=5, metrics={}, average_last=5)
    assert load_model_file(tmp_path / "averaged.pt").weights_sha256 == weights_sha256(weights(1))
    assert json.loads((tmp_path / "state.json").read_text())["averaged"]["rounds"] == [1, 1]


def test_a_missing_round_file_stops_the_average_with_a_message_naming_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.prepare(TASK, resume=False)
    run.save_round(1, weights(1), task=TASK, num_server_rounds=5, metrics={})
    (tmp_path / "round-0001.pt").unlink()  # pruned by hand
    with pytest.raises(CheckpointError, match=r"round-0001\.pt: model file not found.*lower average_last_rounds"):
        run.save_round(2, weights(2), task=TASK, num_server_rounds=5, metrics={}, average_last=2)
    assert (
        json.loads((tmp_path / "state.json").read_text())["last_round"] == 1
    )  # round 2 never committed: resume redoes it


def test_export_refuses_to_guess_the_published_model_when_state_json_is_unreadable(tmp_path: Path) -> None:
    from server.export import pick_model
    from shared.config import ConfigError

    run = RunDir(tmp_path)
    run.prepare(TASK, resume=False)
    run.save_round(1, weights(1), task=TASK, num_server_rounds=5, metrics={}, average_last=2)
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(ConfigError, match=r"state\.json: unreadable"):
        pick_model(tmp_path, best=False)
