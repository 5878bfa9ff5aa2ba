"""The MLflow backend of :mod:`server.tracking`: one MLflow run per FedRad run, step = round.

The store is a SQLite file the consortium folder holds (``sqlite:///mlflow.db``, artifacts in ``mlartifacts/``
beside it) or the consortium's MLflow server (``http(s)://``). MLflow 3 refuses its old file store (``./mlruns``)
by default, and SQLite needs nothing beyond ``mlflow-skinny`` and the SQLAlchemy FedRad already has.

Each round is one ``log_batch`` (one transaction in a SQL store), with the row's own time as the timestamp, so a
re-sent round is an exact duplicate, which MLflow's SQL store keeps once. Read a run back with MLflow's API:
``MlflowClient(uri).get_metric_history(run_id, "eval/auc")``; the run id is in ``RUN_DIR/tracking.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.tracking import RunInfo, TrackingError, mlflow_status

# An MLflow server that is down must cost the coordinator seconds, not MLflow's default minutes of retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
CARD_ARTIFACT = "model_card.md"
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) in one log_batch


class MlflowBackend:
    name = "mlflow"

    def __init__(self, uri: str, experiment: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.client: Any = None
        self.run_id: str | None = None

    def _client(self) -> Any:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackingError(f"tracking.mlflow needs MLflow: pip install 'fedrad[mlflow]' ({exc})") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
        if self.uri.startswith(("http://", "https://")):
            for key, value in HTTP_DEFAULTS.items():  # an operator's own setting wins
                os.environ.setdefault(key, value)
        return MlflowClient(tracking_uri=self.uri)

    def _artifact_location(self) -> str | None:
        """Artifacts of a SQLite store beside its file (MLflow's default is ./mlruns of whatever folder we run in)."""
        if not self.uri.startswith("sqlite:///"):
            return None  # a server keeps them where its operator said
        return (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_location=self._artifact_location())
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _existing_run(self, state: Mapping[str, Any]) -> Any:
        """The run ``tracking.json`` names, if it lives in this store and was not deleted."""
        from mlflow.exceptions import MlflowException

        if state.get("uri") != self.uri or not state.get("run_id"):
            return None
        try:
            run = self.client.get_run(state["run_id"])
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def open(self, state: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        from mlflow.entities import Param

        self.client = self._client()
        existing = self._existing_run(state)
        if existing is not None:  # a resume, or `track` after the coordinator: the same run, rounds after the last
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            held = existing.data.params
            new = {k: v for k, v in run.params.items() if k not in held}
            changed = {f"resumed.{k}": v for k, v in run.params.items() if k in held and held[k] != v}
            self._log_params(new, changed)
            return {**state, "run_id": self.run_id}
        experiment = self.experiment or run.consortium
        experiment_id = self._experiment_id(experiment)
        created = self.client.create_run(experiment_id, run_name=run.name, tags=run.tags)
        self.run_id = created.info.run_id
        params = [Param(k, v) for k, v in run.params.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        return {
            "uri": self.uri,
            "experiment": experiment,
            "experiment_id": experiment_id,
            "run_id": self.run_id,
            "last_round": 0,  # a new MLflow run holds no round yet, whatever an older store held
        }

    def _log_params(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        if params or tags:
            self.client.log_batch(
                self.run_id,
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )

    def log_round(self, rnd: int, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            raise TrackingError("no MLflow run open")
        batch = [Metric(key, value, timestamp_ms, rnd) for key, value in sorted(metrics.items())]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def finish(self, card: str | None, status: str, last_round: int) -> None:
        if self.run_id is None:
            return
        if card:
            self.client.log_text(self.run_id, card, CARD_ARTIFACT)  # the same path each time: a re-send replaces it
        self.client.set_tag(self.run_id, "fedrad.status", status)
        self.client.set_terminated(self.run_id, status=mlflow_status(status))

    def close(self) -> None:
        self.client = None
