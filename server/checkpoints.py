"""The run folder: one global model file per round, metrics history, and what a resume needs.

Layout (the contract with ``fedrad-server status/export/start --resume``)::

    RUN_DIR/round-0001.pt ...   global model after round k (FedRad model file, provenance
                                kind "federated", rounds=k, trained_by=<consortium>)
    RUN_DIR/latest.pt           copy of the last finished round's file
    RUN_DIR/averaged.pt         with average_last_rounds K > 1: the mean of the global models of the last
                                K rounds (server.round_average), the model the run publishes
    RUN_DIR/best.pt             the round with the best aggregated evaluation AUC so far
                                (segmentation: mean Dice, ``dice-mean``; appears with the
                                first round that has one)
    RUN_DIR/metrics.jsonl       one JSON object per finished round
    RUN_DIR/strategy-state.pt   server optimizer state (FedAdam/FedYogi moments), if any
    RUN_DIR/state.json          the commit point: last finished round, strategy, seed, hashes
    RUN_DIR/progress.json       the wave in flight (round, train/evaluate, the sites asked, since when), for
                                the live dashboard only: never read by a resume

Crash safety: every file is written to a temporary name and renamed into place
(readers never see half a file), and ``state.json`` is written *last*, so it
only ever names a round whose files are complete. A metrics line written for a
round that ``state.json`` does not know (crash in between) is dropped on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.round_average import write_round_average
from shared.config import PreprocessConfig
from shared.modelfile import ModelFileError, load_model_file, save_model_file
from shared.tasks import TaskSpec

STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
STRATEGY_STATE_FILE = "strategy-state.pt"
LATEST_FILE = "latest.pt"
PROGRESS_FILE = "progress.json"
BEST_FILE = "best.pt"
STATE_FORMAT = "fedrad-run-state"
STATE_VERSION = 1


class CheckpointError(RuntimeError):
    """The run folder cannot be used as asked; the message names the file and what to do."""


def round_file_name(rnd: int) -> str:
    return f"round-{rnd:04d}.pt"


def _atomic(path: Path, write) -> None:  # noqa: ANN001 - write(fileobj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic(Path(path), lambda fh: fh.write(data))


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is always either the old or the new whole file."""
    with open(src, "rb") as fin:
        _atomic(Path(dst), lambda fh: shutil.copyfileobj(fin, fh))


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    _atomic(path, lambda fh: fh.write(data))


@dataclass(frozen=True)
class RunTask:
    """What the run trains: recorded in every model file and checked on resume."""

    task: TaskSpec
    consortium: str
    strategy: str
    seed: int
    # where round 1's weights came from (shared.start_weights), kept in every round's provenance; None: fresh
    init_weights: Mapping[str, Any] | None = field(default=None, compare=False)

    # state.json's names for the task (kept from before the task seam, so older run folders resume)
    @property
    def task_type(self) -> str:
        return self.task.type

    @property
    def model(self) -> str:
        return self.task.model

    @property
    def classes(self) -> list[str]:
        """The output names: classes, or the segment labels of a segmentation task."""
        return list(self.task.outputs)

    @property
    def image_size(self) -> int:
        return self.task.image_size

    @property
    def task_options(self) -> dict[str, str]:
        """The task's settings (e.g. a 3D task's spacing and window): a resumed run keeps them."""
        return dict(self.task.options)

    @property
    def best_metric(self) -> str:
        """The aggregated evaluation figure that picks ``best.pt`` (higher is better): the task's headline."""
        return self.task.headline_metric


@dataclass
class ResumePoint:
    """Where a resumed run starts: the weights and strategy state of the last finished round."""

    last_round: int
    state_dict: dict[str, torch.Tensor]
    weights_sha256: str
    strategy_state: dict[str, dict[str, np.ndarray]]
    best_auc: float | None
    best_round: int | None


class RunDir:
    """Read and write one run folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def round_path(self, rnd: int) -> Path:
        return self.path / round_file_name(rnd)

    def state(self) -> dict | None:
        """Parsed ``state.json``, or None for a new run folder."""
        path = self.path / STATE_FILE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc}); restore it from backup or start a new run") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path}: not a FedRad run state file")
        return state

    # ----------------------------------------------------------------- start / resume
    def prepare(self, task: RunTask, *, resume: bool) -> ResumePoint | None:
        """Check the folder fits this run; return where to resume, or None to start at round 1.

        A folder that already finished rounds is never overwritten: without
        ``resume`` that is an error. With ``resume`` the task and strategy must
        match what the folder was trained with.
        """
        state = self.state()
        if state is None:
            self.path.mkdir(parents=True, exist_ok=True)
            return None
        last = int(state.get("last_round", 0))
        if not resume:
            raise CheckpointError(
                f"{self.path} already holds a run (last finished round {last}); "
                "resume it (resume=true / --resume) or use a new run folder"
            )
        for key in ("task_type", "model", "classes", "image_size", "strategy", "task_options"):
            if key == "task_options" and key not in state:  # a folder from before task settings were recorded
                continue
            if state.get(key, "classification" if key == "task_type" else None) != getattr(task, key):
                raise CheckpointError(
                    f"{self.path / STATE_FILE}: the run was trained with {key}={state.get(key)!r}, "
                    f"this run asks for {getattr(task, key)!r}; resume with the same settings or start a new run"
                )
        model_path = self.path / state["model_file"]
        try:
            loaded = load_model_file(model_path)
        except ModelFileError as exc:
            raise CheckpointError(f"cannot resume: {exc}") from None
        if loaded.weights_sha256 != state.get("weights_sha256"):
            raise CheckpointError(f"{model_path}: weights differ from {STATE_FILE}; the run folder was modified")
        strategy_state: dict = {}
        if state.get("strategy_state_file"):
            sp = self.path / state["strategy_state_file"]
            try:
                raw = torch.load(sp, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
                raise CheckpointError(
                    f"{sp}: cannot read the strategy state ({type(exc).__name__}); cannot resume"
                ) from None
            strategy_state = {a: {k: v.numpy() for k, v in d.items()} for a, d in raw.items()}
        rows = read_metrics(self.path)
        kept = [r for r in rows if int(r.get("round", 0)) <= last]
        if len(kept) != len(rows) or (self.path / METRICS_FILE).exists():
            _write_metrics(self.path / METRICS_FILE, kept)  # drop lines of a round that never committed
        best = state.get("best") or {}
        return ResumePoint(
            last_round=last,
            state_dict={k: v.clone() for k, v in loaded.model.state_dict().items()},
            weights_sha256=loaded.weights_sha256,
            strategy_state=strategy_state,
            best_auc=best.get(task.best_metric),
            best_round=best.get("round"),
        )

    # ----------------------------------------------------------------- after every round
    def save_round(
        self,
        rnd: int,
        state_dict: Mapping[str, torch.Tensor],
        *,
        task: RunTask,
        num_server_rounds: int,
        metrics: dict,
        strategy_state: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        eval_auc: float | None = None,
        privacy: dict | None = None,
        average_last: int = 0,
    ) -> str:
        """Write round ``rnd``'s files, then commit ``state.json``; return the weights SHA-256.

        ``eval_auc`` is the round's :attr:`RunTask.best_metric` (the task's headline metric). With
        ``average_last`` K > 1, ``averaged.pt`` becomes the mean of rounds rnd-K+1..rnd, and ``state.json``
        says so (a stale one from an earlier setting is never named there)."""
        path = self.round_path(rnd)
        digest = save_model_file(
            path,
            dict(state_dict),
            architecture=task.model,
            arch_kwargs={},
            **task.task.model_file_outputs(),
            preprocess=PreprocessConfig(image_size=task.image_size),
            threshold=None,
            provenance={
                "trained_by": task.consortium,
                "kind": "federated",
                "rounds": rnd,
                "extra": {
                    "strategy": task.strategy,
                    "seed": task.seed,
                    **({"privacy": privacy} if privacy else {}),
                    **({"init_weights": dict(task.init_weights)} if task.init_weights else {}),
                },
            },
        )
        copy_atomic(path, self.path / LATEST_FILE)
        averaged = None
        if average_last > 1:
            try:
                averaged = write_round_average(self.path, rnd, average_last, self.round_path)
            except ModelFileError as exc:  # e.g. an operator pruned old round files
                raise CheckpointError(
                    f"cannot average the last {average_last} rounds: {exc}; restore that round file "
                    "from backup, or lower average_last_rounds (0 = off) and resume"
                ) from None
        previous = self.state() or {}
        best = dict(previous.get("best") or {})
        metric = task.best_metric
        if eval_auc is not None and (best.get(metric) is None or eval_auc > best[metric]):
            copy_atomic(path, self.path / BEST_FILE)
            best = {"round": rnd, metric: float(eval_auc), "file": round_file_name(rnd)}
        strategy_file = None
        if strategy_state:
            tensors = {
                a: {k: torch.from_numpy(np.array(v, order="C")) for k, v in d.items()}
                for a, d in strategy_state.items()
            }
            _atomic(self.path / STRATEGY_STATE_FILE, lambda fh: torch.save(tensors, fh))
            strategy_file = STRATEGY_STATE_FILE
        row = {**metrics, "round": rnd, "weights_sha256": digest, "strategy": task.strategy}
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        write_json_atomic(
            self.path / STATE_FILE,
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "last_round": rnd,
                "num_server_rounds": num_server_rounds,
                "model_file": round_file_name(rnd),
                "weights_sha256": digest,
                "strategy": task.strategy,
                "strategy_state_file": strategy_file,
                "task_type": task.task_type,
                "model": task.model,
                "classes": list(task.classes),
                "image_size": task.image_size,
                "task_options": task.task_options,
                "consortium": task.consortium,
                "seed": task.seed,
                "best": best or None,
                "averaged": averaged,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        return digest
