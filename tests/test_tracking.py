"""Experiment tracking (``tracking:`` in consortium.yaml): MLflow and TensorBoard, read back with their own APIs.

The rows are ``metrics.jsonl`` lines as the ServerApp writes them (a real 3-site FedAvg run's, with site-level
DP's ε added), committed to a run folder by :class:`server.checkpoints.RunDir` exactly as a run commits them.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from server.checkpoints import RunDir, RunTask
from server.cli import app as server_cli
from server.consortium import load_consortium, parse_consortium
from server.enrollment import enroll_site, init_consortium
from server.tracking import TRACKING_JSON, Tracker, round_metrics, run_model_card, track_run
from shared.config import ConfigError
from shared.models import build_model
from shared.processes import free_port
from shared.tasks import TaskSpec

pytestmark = pytest.mark.timeout(120)

PRIVACY = {
    "accounting": "rdp, client-level, no sampling amplification",
    "clipping_norm": 1.0,
    "delta": 1e-05,
    "noise_multiplier": 1.5,
}
# Three rounds of a real run (`make demo`), as server/app.py and RunDir.save_round wrote them; ε added per round.
ROWS = [
    {
        "bytes_per_site": {"down": 321384, "model": 321384, "up": 321384},
        "eval": None,
        "failures": [],
        "privacy": {**PRIVACY, "epsilon": 2.9801, "rounds_released": 1},
        "round": 1,
        "seconds": 11.108,
        "sites_answered": 3,
        "sites_failed": 0,
        "start_weights_sha256": "1ca0813629a6a75eb5f1de0f4eeabce831b3774697bcc17c877bdfd85278c9c1",
        "strategy": "fedavg",
        "time": "2026-12-05T17:07:24+00:00",
        "timing": {"aggregate_s": 0.022, "evaluate_wave_s": 0.0, "train_wave_s": 11.074, "wait_sites_s": 0.012},
        "train": {
            "handler-s": 5.587660273999973,
            "load-s": 1.7817967529999805,
            "num-examples": 227,
            "sites": 3,
            "startup-s": 3.6367266178131104,
            "train-acc": 0.5991189427312775,
            "train-loss": 0.6508993997447816,
            "train-s": 3.5973481789997095,
            "warm-worker": 1.0,
        },
    },  # fmt: skip
    {
        "bytes_per_site": {"down": 321384, "model": 321384, "up": 321384},
        "eval": None,
        "failures": [],
        "privacy": {**PRIVACY, "epsilon": 4.3122, "rounds_released": 2},
        "round": 2,
        "seconds": 9.13,
        "sites_answered": 3,
        "sites_failed": 0,
        "start_weights_sha256": "850832998d6ce8e3bcf6a42fd875e379ba0292494d14d7f3b35ff1b9eb12bc64",
        "strategy": "fedavg",
        "time": "2026-12-05T17:07:33+00:00",
        "timing": {"aggregate_s": 0.014, "evaluate_wave_s": 0.0, "train_wave_s": 9.106, "wait_sites_s": 0.009},
        "train": {
            "handler-s": 2.654109299999618,
            "load-s": 0.0,
            "num-examples": 227,
            "sites": 3,
            "startup-s": 4.602463960647583,
            "train-acc": 0.6475770925110133,
            "train-loss": 0.6419941948373937,
            "train-s": 2.573884268999791,
            "warm-worker": 1.0,
        },
    },  # fmt: skip
    {
        "bytes_per_site": {"down": 642768, "model": 321384, "up": 321384},
        "eval": {
            "accuracy": 0.6346153937853299,
            "auc": 0.786946386946387,
            "auc-examples": 57,
            "handler-s": 0.10834452899962344,
            "held-out": 1.0,
            "load-s": 0.0,
            "loss": 0.6188897903148944,
            "num-examples": 57,
            "sites": 3,
            "startup-s": 2.949122667312622,
            "warm-worker": 1.0,
        },
        "failures": [{"node": 7, "reason": "evaluate: timed out"}],
        "privacy": {**PRIVACY, "epsilon": 5.4407, "rounds_released": 3},
        "round": 3,
        "seconds": 13.52,
        "sites_answered": 3,
        "sites_failed": 0,
        "start_weights_sha256": "ee8a8b30d5da5b45622dfd2c0cf8c2621aabade2994da787a596e895f192cd5c",
        "strategy": "fedavg",
        "time": "2026-12-05T17:07:47+00:00",
        "timing": {"aggregate_s": 0.013, "evaluate_wave_s": 4.59, "train_wave_s": 8.907, "wait_sites_s": 0.01},
        "train": {
            "handler-s": 2.5987073220003367,
            "load-s": 0.0,
            "num-examples": 227,
            "sites": 3,
            "startup-s": 3.22963809967041,
            "train-acc": 0.7577092511013216,
            "train-loss": 0.5301358521247225,
            "train-s": 2.5605081459998473,
            "warm-worker": 1.0,
        },
    },  # fmt: skip
]
TASK = RunTask(TaskSpec("classification", ("normal", "nodule"), "smallcnn", 32), "Track Net", "fedavg", 0)


def _consortium(tmp_path: Path, tracking: dict | None) -> Path:
    c = tmp_path / "consortium"
    init_consortium(c, "Track Net", "127.0.0.1:9443")
    enroll_site(c, "st-marys")
    cfg = yaml.safe_load((c / "consortium.yaml").read_text())
    cfg.update(rounds=3, privacy={"dp": {"noise_multiplier": 1.5, "clipping_norm": 1.0}})
    if tracking is not None:
        cfg["tracking"] = tracking
    (c / "consortium.yaml").write_text(yaml.safe_dump(cfg))
    return c


def _commit(run_dir: Path, rounds: range) -> None:
    """Commit rounds as the ServerApp does: model file, metrics line, then state.json."""
    run = RunDir(run_dir)
    run.prepare(TASK, resume=run.state() is not None)
    torch.manual_seed(0)
    model = build_model("smallcnn", 2, 32)
    for rnd in rounds:
        row = {k: v for k, v in copy.deepcopy(ROWS[rnd - 1]).items() if k not in ("round", "strategy")}
        auc = (row["eval"] or {}).get("auc")
        run.save_round(
            rnd, model.state_dict(), task=TASK, num_server_rounds=3, metrics=row, eval_auc=auc, privacy=row["privacy"]
        )


def _start(tracker: Tracker, c: Path, run_dir: Path, *, resume: bool = False) -> None:
    cfg = load_consortium(c)
    tracker.start(run_dir, cfg.to_run_config(run_dir=run_dir, resume=resume), cfg)


def _mlflow_run(c: Path, run_dir: Path):  # noqa: ANN202 - mlflow.entities.Run
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / TRACKING_JSON).read_text())["mlflow"]
    client = MlflowClient(state["uri"])
    return client, client.get_run(state["run_id"])


def _tensorboard(directory: Path):  # noqa: ANN202 - EventAccumulator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_row_becomes_prefixed_metrics_with_epsilon() -> None:
    first, third = round_metrics(ROWS[0]), round_metrics(ROWS[2])
    assert first["train/loss"] == pytest.approx(0.6508993997447816) and first["train/acc"] > 0.5
    assert first["privacy/epsilon"] == 2.9801
    assert first["round/seconds"] == 11.108 and first["round/sites"] == 3 and first["round/sites_failed"] == 0
    assert first["round/bytes_up"] == 321384 and first["round/bytes_down"] == 321384
    assert first["round/train_wave_s"] == 11.074
    assert not any(k.startswith("eval/") for k in first)  # no evaluation that round: no eval metric, not a 0
    assert third["eval/auc"] == pytest.approx(0.786946386946387) and third["eval/num-examples"] == 57
    assert third["round/bytes_down"] == 642768
    assert all(isinstance(v, float) for v in third.values())


def test_mlflow_and_tensorboard_hold_one_step_per_round_across_a_resume(tmp_path: Path) -> None:
    c = _consortium(tmp_path, {"mlflow": None, "tensorboard": {}})  # `mlflow:` with no value: on, defaults
    cfg = load_consortium(c)
    assert (
        cfg.tracking.mlflow.uri == f"sqlite:///{c / 'mlflow.db'}" and cfg.tracking.tensorboard.dir == c / "tensorboard"
    )
    run_dir = c / "runs" / "run-1"
    said: list[str] = []

    # The coordinator sends rounds 1-2, then dies (SIGKILL: no finish) after round 3 is committed but not sent.
    first = Tracker.from_settings(cfg.tracking, say=said.append)
    _commit(run_dir, range(1, 3))
    _start(first, c, run_dir)
    assert first.sync(run_dir) == 2 and first.sent == {"mlflow": 2, "tensorboard": 2}
    first.sync(run_dir)  # nothing new: nothing sent
    assert first.sent == {"mlflow": 2, "tensorboard": 2}
    _commit(run_dir, range(3, 4))
    first.close()

    # `start --resume`: the same MLflow run, round 3 sent once, never 1-2 again.
    second = Tracker.from_settings(cfg.tracking, say=said.append)
    _start(second, c, run_dir, resume=True)
    assert second.sync(run_dir) == 3 and second.sent == {"mlflow": 1, "tensorboard": 1}
    second.finish(run_model_card(c, run_dir), "finished:completed")
    assert said == []

    client, run = _mlflow_run(c, run_dir)
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # one MLflow run for the FedRad run
    assert client.get_experiment(run.info.experiment_id).name == "Track Net"
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    for key in ("round/seconds", "privacy/epsilon", "train/loss", "round/sites"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "privacy/epsilon")] == [2.9801, 4.3122, 5.4407]
    auc = client.get_metric_history(run.info.run_id, "eval/auc")
    assert [(m.step, round(m.value, 6)) for m in auc] == [(3, 0.786946)]
    assert run.data.tags["fedrad.headline_metric"] == "eval/auc"
    params = run.data.params
    assert (
        params["strategy"] == "fedavg" and params["num-server-rounds"] == "3" and params["dp-noise-multiplier"] == "1.5"
    )
    assert "resume" not in params
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model_card.md"]
    card = Path(client.download_artifacts(run.info.run_id, "model_card.md", str(tmp_path)))
    assert "# Model card: Track Net" in card.read_text() and "st-marys" in card.read_text()
    assert (c / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # beside the store, not in cwd

    acc = _tensorboard(c / "tensorboard" / "run-1")
    for key in ("round/seconds", "privacy/epsilon", "train/loss"):
        assert [e.step for e in acc.Scalars(key)] == [1, 2, 3], key
    assert [e.step for e in acc.Scalars("eval/auc")] == [3]
    assert "strategy-params" in acc.Tensors("run_config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Model card" in acc.Tensors("model_card/text_summary")[0].tensor_proto.string_val[0].decode()

    # `fedrad-server track` afterwards is a no-op: everything is there already.
    report = track_run(c, run_dir, say=said.append)
    assert report == {
        "mlflow": {"sent": 0, "last_round": 3, "error": None},
        "tensorboard": {"sent": 0, "last_round": 3, "error": None},
    }
    assert len(client.get_metric_history(run.info.run_id, "round/seconds")) == 3
    assert [e.step for e in _tensorboard(c / "tensorboard" / "run-1").Scalars("round/seconds")] == [1, 2, 3]
    assert len(_tensorboard(c / "tensorboard" / "run-1").Tensors("model_card/text_summary")) == 1


def test_mlflow_down_warns_once_and_the_rounds_are_sent_later_with_track(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: an MLflow server that is down
    c = _consortium(tmp_path, {"mlflow": {"uri": down}, "tensorboard": {}})
    cfg = load_consortium(c)
    run_dir = c / "runs" / "run-1"
    _commit(run_dir, range(1, 4))
    said: list[str] = []
    tracker = Tracker.from_settings(cfg.tracking, say=said.append, resend_hint=f"fedrad-server track {c}")
    t0 = time.monotonic()
    _start(tracker, c, run_dir)
    tracker.sync(run_dir)
    tracker.finish(None, "finished:completed")
    assert time.monotonic() - t0 < 60  # bounded retries: the coordinator is not held for minutes
    assert len(said) == 1, said  # warned once, with the reason and how to send the rounds later
    assert "tracking.mlflow failed" in said[0] and "training goes on" in said[0]
    assert f"fedrad-server track {c}" in said[0] and "metrics.jsonl" in said[0]
    assert tracker.failed.keys() == {"mlflow"} and tracker.sent["tensorboard"] == 3  # TensorBoard unaffected
    assert [e.step for e in _tensorboard(c / "tensorboard" / "run-1").Scalars("round/seconds")] == [1, 2, 3]

    # The store is reachable again (here: the consortium moves to a SQLite file): `track` sends the whole run.
    doc = yaml.safe_load((c / "consortium.yaml").read_text())
    doc["tracking"]["mlflow"] = {"uri": "sqlite:///mlflow.db", "experiment": "later"}
    (c / "consortium.yaml").write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(server_cli, ["track", str(c), "--run", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["mlflow"] == {"sent": 3, "last_round": 3, "error": None} and report["tensorboard"]["sent"] == 0
    client, run = _mlflow_run(c, run_dir)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "round/seconds")] == [1, 2, 3]
    assert client.get_experiment(run.info.experiment_id).name == "later"


def test_track_sends_a_run_that_was_never_tracked(tmp_path: Path) -> None:
    c = _consortium(tmp_path, None)
    run_dir = c / "runs" / "run-1"
    _commit(run_dir, range(1, 4))
    res = CliRunner().invoke(server_cli, ["track", str(c)])
    assert res.exit_code == 2 and "no tracking section" in res.output
    doc = yaml.safe_load((c / "consortium.yaml").read_text())
    doc["tracking"] = {"mlflow": {"uri": "sqlite:///db/runs.db"}}  # relative to the consortium folder
    (c / "consortium.yaml").write_text(yaml.safe_dump(doc))
    (c / "db").mkdir()
    report = track_run(c)  # default: the last run
    assert report == {"mlflow": {"sent": 3, "last_round": 3, "error": None}}
    client, run = _mlflow_run(c, run_dir)
    assert client.tracking_uri == f"sqlite:///{c / 'db' / 'runs.db'}"
    assert run.info.status == "FINISHED"  # state.json: 3 of 3 rounds
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/auc")] == [3]
    assert track_run(c)["mlflow"]["sent"] == 0  # a second send: nothing new


def test_a_missing_package_stops_start_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = _consortium(tmp_path, {"mlflow": {}, "tensorboard": {"dir": "tb"}})
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError) as exc:
        load_consortium(c)
    assert "tracking.mlflow needs MLflow: pip install 'fedrad[mlflow]'" in str(exc.value)
    assert "tracking.tensorboard needs TensorBoard: pip install 'fedrad[tensorboard]'" in str(exc.value)
    res = CliRunner().invoke(server_cli, ["start", str(c)])
    assert res.exit_code == 2, res.output  # a configuration error, like any other
    assert "pip install 'fedrad[mlflow]'" in res.output
    assert not (c / "state" / "server.json").exists() and not (c / "runs").exists()


@pytest.mark.parametrize(
    ("tracking", "expected"),
    [
        ({"mlflow": {"url": "sqlite:///x.db"}}, "unknown key 'tracking.mlflow.url'"),
        ({"mlfow": {}}, "unknown key 'tracking.mlfow'"),
        ({"mlflow": {"uri": "file:./mlruns"}}, "key 'tracking.mlflow.uri'"),
        ({"mlflow": {"uri": "./mlruns"}}, "use sqlite:///mlflow.db"),
        ({"mlflow": {"uri": "ftp://host/x"}}, "must start with one of sqlite:"),
        ({"mlflow": {"uri": "sqlite://"}}, "a SQLite store is a file"),
        ({"tensorboard": {"dir": "tb", "flush": 1}}, "unknown key 'tracking.tensorboard.flush'"),
    ],
)
def test_a_wrong_tracking_key_is_named(tracking: dict, expected: str) -> None:
    data = {"name": "X", "address": "h:9443", "tracking": tracking}
    with pytest.raises(ConfigError) as exc:
        parse_consortium(data, "consortium.yaml")
    assert expected in str(exc.value)


def test_tracking_is_off_by_default_and_a_server_uri_is_kept(tmp_path: Path) -> None:
    assert parse_consortium({"name": "X", "address": "h:9443"}).tracking.enabled == []
    cfg = parse_consortium(
        {"name": "X", "address": "h:9443", "tracking": {"mlflow": {"uri": "http://mlflow.example.org:5000"}}},
        base_dir=tmp_path,
    )
    assert cfg.tracking.mlflow.uri == "http://mlflow.example.org:5000" and cfg.tracking.enabled == ["mlflow"]
    absolute = parse_consortium(
        {"name": "X", "address": "h:9443", "tracking": {"mlflow": {"uri": "sqlite:////srv/mlflow/m.db"}}},
        base_dir=tmp_path,
    )
    assert absolute.tracking.mlflow.uri == "sqlite:////srv/mlflow/m.db"
