"""Experiment tracking: a run's per-round aggregates, ε, run config and model card to MLflow and TensorBoard.

``tracking:`` in consortium.yaml names the backends (:class:`server.consortium.TrackingSettings`). Only what the
server already holds is sent: the rows of ``RUN_DIR/metrics.jsonl`` (aggregate train/eval metrics, ε, seconds,
sites answered and failed, bytes per site), the run config and the model card. Nothing new leaves a site.

Who sends: the coordinator (``fedrad-server start``, :func:`server.coordinator.follow_run`), never the ServerApp,
which runs in Flower's process with the app bundle's environment. Each poll :meth:`Tracker.sync` sends the rounds
that ``state.json`` has committed and no backend has yet, so

* a resumed run (``--resume``) continues the same MLflow run (its id is in ``RUN_DIR/tracking.json``) and sends
  the rounds the killed coordinator had not, and never a round twice;
* a backend that fails (an MLflow server down) is warned about once, with the reason, and left alone for the rest
  of the session: training goes on, the rows stay in ``metrics.jsonl``, and ``fedrad-server track DIR --run RUN_DIR``
  (:func:`track_run`) sends what is missing later, as often as needed.

Step = round number. Metric names: ``train/<key>``, ``eval/<key>`` (the aggregate's own keys without their
``train-``/``eval-`` prefix), ``privacy/epsilon``, ``round/seconds``, ``round/sites``, ``round/sites_failed``,
``round/bytes_up`` and ``round/bytes_down`` (per site), ``round/<phase>_s`` (timing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from server.checkpoints import METRICS_FILE, read_metrics, write_json_atomic
from server.consortium import ConsortiumConfig, TrackingSettings
from shared.config import ConfigError

TRACKING_JSON = "tracking.json"  # RUN_DIR/tracking.json: each backend's run id and the last round it holds
NOT_PARAMS = ("resume",)  # run-config keys that change between a run and its resume: not MLflow params


class TrackingError(RuntimeError):
    """A backend could not take what was sent; the message says why (the run goes on regardless)."""


class Backend(Protocol):
    """One tracking destination. ``state`` is its part of ``tracking.json`` (what a resume continues)."""

    name: str

    def open(self, state: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        """Start or continue this run's record; return the state to keep (``last_round`` 0 for a new record)."""
        ...

    def log_round(self, rnd: int, metrics: Mapping[str, float], timestamp_ms: int) -> None: ...

    def finish(self, card: str | None, status: str, last_round: int) -> None: ...

    def close(self) -> None: ...


class RunInfo:
    """What every backend is told about the run when it opens."""

    def __init__(self, run_dir: Path, run_config: Mapping[str, Any], consortium: ConsortiumConfig) -> None:
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self.run_config = dict(run_config)
        self.consortium = consortium.name
        self.headline_metric = f"eval/{consortium.task.spec().task.headline_metric}"

    @property
    def params(self) -> dict[str, str]:
        """The run config as MLflow params (strings), without the keys a resume changes."""
        return {k: str(v) for k, v in sorted(self.run_config.items()) if k not in NOT_PARAMS}

    @property
    def tags(self) -> dict[str, str]:
        return {
            "fedrad.consortium": self.consortium,
            "fedrad.run_dir": str(self.run_dir),
            "fedrad.headline_metric": self.headline_metric,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def round_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` row as flat metric names → numbers (what every backend logs at step = round)."""
    out: dict[str, float] = {}
    for section in ("train", "eval"):
        sub = row.get(section)
        if isinstance(sub, Mapping):
            for key, value in sub.items():
                number = _number(value)
                if number is not None:
                    out[f"{section}/{str(key).removeprefix(section + '-')}"] = number
    privacy = row.get("privacy")
    if isinstance(privacy, Mapping) and _number(privacy.get("epsilon")) is not None:
        out["privacy/epsilon"] = float(privacy["epsilon"])
    for key, name in (("seconds", "seconds"), ("sites_answered", "sites"), ("sites_failed", "sites_failed")):
        value = row.get(key)
        number = float(len(value)) if isinstance(value, list) else _number(value)
        if number is not None:
            out[f"round/{name}"] = number
    sent = row.get("bytes_per_site")
    if isinstance(sent, Mapping):
        for key in ("up", "down"):
            if _number(sent.get(key)) is not None:
                out[f"round/bytes_{key}"] = float(sent[key])
    timing = row.get("timing")
    if isinstance(timing, Mapping):
        for key, value in timing.items():
            if _number(value) is not None:
                out[f"round/{key}"] = float(value)
    return out


def row_timestamp_ms(row: Mapping[str, Any]) -> int:
    """When the round ended (the row's ``time``), in ms: the same row always gets the same timestamp."""
    try:
        return int(datetime.fromisoformat(str(row["time"])).timestamp() * 1000)
    except (KeyError, ValueError, TypeError):
        return int(datetime.now().timestamp() * 1000)


def committed_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` whose round ``state.json`` has committed (a crash may leave one more)."""
    from server.checkpoints import CheckpointError, RunDir

    try:
        state = RunDir(run_dir).state() or {}
    except CheckpointError:
        return []
    last = int(state.get("last_round", 0))
    return [r for r in read_metrics(run_dir) if 0 < int(r.get("round", 0)) <= last]


def backends_for(settings: TrackingSettings) -> list[Backend]:
    """The configured backends (their packages are imported only when they open)."""
    found: list[Backend] = []
    if settings.mlflow is not None:
        from server.tracking_mlflow import MlflowBackend

        found.append(MlflowBackend(settings.mlflow.uri, settings.mlflow.experiment))
    if settings.tensorboard is not None:
        from server.tracking_tensorboard import TensorBoardBackend

        found.append(TensorBoardBackend(Path(settings.tensorboard.dir)))
    return found


class Tracker:
    """Every configured backend of one run, with the run's ``tracking.json``; never raises on a backend's failure."""

    def __init__(
        self, backends: list[Backend], say: Callable[[str], None] = print, resend_hint: str | None = None
    ) -> None:
        self.backends = backends
        self.say = say
        self.resend_hint = resend_hint  # the command that sends the rounds a failed backend missed
        self.failed: dict[str, str] = {}  # backend name -> reason (this session)
        self.sent: dict[str, int] = {b.name: 0 for b in backends}  # rounds sent this session
        self.state: dict[str, Any] = {}
        self.run_dir: Path | None = None
        self._synced = 0
        self.finished = False

    @classmethod
    def from_settings(cls, settings: TrackingSettings, **kwargs: Any) -> Tracker:
        return cls(backends_for(settings), **kwargs)

    # ----------------------------------------------------------------- bookkeeping
    def _live(self) -> list[Backend]:
        return [b for b in self.backends if b.name not in self.failed]

    def _fail(self, backend: Backend, exc: BaseException) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:  # an HTTP error's cause ("Connection refused") is at its end
            reason = f"{reason[:150]} … {reason[-140:]}"
        self.failed[backend.name] = reason
        where = f" in {self.run_dir / METRICS_FILE}" if self.run_dir else ""
        later = f"; send them later with `{self.resend_hint}`" if self.resend_hint else ""
        self.say(f"warning: tracking.{backend.name} failed ({reason}); training goes on, the rounds stay{where}{later}")
        try:
            backend.close()
        except Exception:  # noqa: BLE001, S110 - a backend that failed may fail to close too
            pass

    def _save(self) -> None:
        if self.run_dir is not None:
            write_json_atomic(self.run_dir / TRACKING_JSON, self.state)

    def last_round(self, name: str) -> int:
        return int((self.state.get(name) or {}).get("last_round", 0))

    # ----------------------------------------------------------------- the run
    def start(self, run_dir: Path, run_config: Mapping[str, Any], consortium: ConsortiumConfig) -> None:
        """Open (or, after a resume, continue) every backend's record of the run in ``run_dir``."""
        from server.coordinator import read_json

        self.run_dir = Path(run_dir)
        self.state = read_json(self.run_dir / TRACKING_JSON) or {}
        info = RunInfo(self.run_dir, run_config, consortium)
        self.state["run_config"] = info.run_config  # what the run was last submitted with (`track` re-sends it)
        for backend in self.backends:
            try:
                self.state[backend.name] = backend.open(dict(self.state.get(backend.name) or {}), info)
            except Exception as exc:  # noqa: BLE001 - whatever a tracking backend raises, training goes on
                self._fail(backend, exc)
        self._save()

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Send one ``metrics.jsonl`` row to every backend that does not hold its round yet."""
        rnd = int(row.get("round", 0))
        metrics = {k: v for k, v in round_metrics(row).items() if not math.isinf(v)}
        ts = row_timestamp_ms(row)
        for backend in self._live():
            if rnd <= self.last_round(backend.name):
                continue  # already there: a resume or a re-send never logs a round twice
            try:
                backend.log_round(rnd, metrics, ts)
            except Exception as exc:  # noqa: BLE001
                self._fail(backend, exc)
                continue
            self.state.setdefault(backend.name, {})["last_round"] = rnd
            self.sent[backend.name] += 1
        self._save()

    def sync(self, run_dir: Path | None = None) -> int:
        """Send the committed rounds of the run folder that a backend lacks; return the last committed round.

        Cheap when nothing is new (reads ``state.json`` only), so the coordinator calls it every poll."""
        from server.coordinator import read_json

        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if run_dir is None or not self._live():
            return self._synced
        try:
            last = int((read_json(run_dir / "state.json") or {}).get("last_round", 0))
            if last > self._synced:
                for row in committed_rows(run_dir):
                    if any(int(row.get("round", 0)) > self.last_round(b.name) for b in self._live()):
                        self.log_round(row)
        except Exception as exc:  # noqa: BLE001 - e.g. tracking.json unwritable: the run goes on
            if "sync" not in self.failed:
                self.failed["sync"] = str(exc)
                self.say(f"warning: tracking could not read or record {run_dir} ({exc}); training goes on")
            return self._synced
        self._synced = last
        return last

    def finish(self, card: str | None, status: str) -> None:
        """The model card as an artifact, and the run's end (``finished:completed`` or what else it became)."""
        for backend in self._live():
            try:
                backend.finish(card, status, self.last_round(backend.name))
            except Exception as exc:  # noqa: BLE001
                self._fail(backend, exc)
                continue
            self.state.setdefault(backend.name, {})["status"] = status
        self._save()
        self.close()
        self.finished = True

    def close(self) -> None:
        for backend in self._live():
            try:
                backend.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass


def run_model_card(directory: Path, run_dir: Path) -> str | None:
    """The model card of the run's published model (as ``fedrad-server export`` writes it), or None without one."""
    from server.export import pick_model
    from server.model_card import enrolled_sites, model_card
    from shared.modelfile import load_model_file

    try:
        src = pick_model(Path(run_dir), best=False)
        loaded = load_model_file(src)
    except Exception:  # noqa: BLE001 - no finished round yet, or an unreadable file: no card, tracking goes on
        return None
    return model_card(loaded, Path(run_dir), {src.name: "the run's published global model"}, enrolled_sites(directory))


def mlflow_status(status: str) -> str:
    """A Flower run status as MLflow's: FINISHED, KILLED (stopped, interrupted, unfinished) or FAILED."""
    if status == "finished:completed":
        return "FINISHED"
    if status in ("finished:stopped", "interrupted", "unfinished"):
        return "KILLED"
    return "FAILED"


def _run_status(directory: Path, run_dir: Path) -> str:
    """The run's Flower status where the coordinator recorded it; otherwise from ``state.json``."""
    from server.coordinator import CURRENT_RUN_JSON, STATE_DIR, read_json

    current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON) or {}
    if current.get("run_dir") == str(run_dir) and str(current.get("status", "")).startswith("finished:"):
        return str(current["status"])
    state = read_json(run_dir / "state.json") or {}
    done = state.get("last_round") and state.get("last_round") == state.get("num_server_rounds")
    return "finished:completed" if done else "unfinished"


def track_run(directory: Path, run_dir: Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """``fedrad-server track``: send a run's rounds, run config and model card to the configured trackers.

    Idempotent: a round a backend already holds (``tracking.json``) is not sent again, and the MLflow run is the
    one the coordinator started. Returns ``{backend: {"sent": n, "last_round": k, "error": reason | None}}``."""
    from server.consortium import load_consortium
    from server.coordinator import CURRENT_RUN_JSON, STATE_DIR, last_run_dir, read_json
    from server.status import server_running

    directory = Path(directory).resolve()
    cfg = load_consortium(directory)
    if not cfg.tracking.enabled:
        raise ConfigError(
            f"{directory / 'consortium.yaml'}: no tracking section; add tracking: {{mlflow: {{}}}} or "
            "{tensorboard: {}} (docs/coordinator.md, Experiment tracking)"
        )
    if run_dir is None:
        current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON) or {}
        run_dir = Path(current["run_dir"]) if current.get("run_dir") else last_run_dir(directory)
    if run_dir is None or not (Path(run_dir) / "state.json").is_file():
        raise ConfigError(f"{run_dir or directory / 'runs'}: no run with a finished round to send; give --run RUN_DIR")
    run_dir = Path(run_dir).resolve()
    current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON) or {}
    if current.get("run_dir") == str(run_dir) and current.get("status") == "submitted" and server_running(directory):
        raise ConfigError(
            f"{run_dir} is still training; `fedrad-server start` sends its rounds. Track it once it ends."
        )
    tracker = Tracker.from_settings(cfg.tracking, say=say)
    stored = read_json(run_dir / TRACKING_JSON) or {}
    run_config = stored.get("run_config") or cfg.to_run_config(run_dir=run_dir)
    tracker.start(run_dir, run_config, cfg)
    tracker.sync(run_dir)
    tracker.finish(run_model_card(directory, run_dir), _run_status(directory, run_dir))
    return {
        b.name: {
            "sent": tracker.sent[b.name],
            "last_round": tracker.last_round(b.name),
            "error": tracker.failed.get(b.name),
        }
        for b in tracker.backends
    }
