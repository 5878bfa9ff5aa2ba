"""The TensorBoard backend of :mod:`server.tracking`: event files in ``DIR/<run name>/``, step = round.

Written with ``torch.utils.tensorboard.SummaryWriter`` (it needs the ``tensorboard`` package:
``pip install 'fedrad[tensorboard]'``); read with ``tensorboard --logdir DIR``. A resumed run or a re-send adds an
event file to the same folder with only the rounds it lacked (``tracking.json`` says which), and TensorBoard shows
the folder's files as one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.tracking import RunInfo, TrackingError


def config_markdown(params: Mapping[str, str]) -> str:
    """The run config as a Markdown table (TensorBoard's text tab renders it)."""
    bar = "\\|"  # a | inside a cell, escaped
    rows = "\n".join(f"| {k} | {str(v).replace('|', bar)} |" for k, v in params.items())
    return "| key | value |\n|---|---|\n" + rows


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.writer: Any = None
        self.state: dict[str, Any] = {}

    def open(self, state: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackingError(
                f"tracking.tensorboard needs TensorBoard: pip install 'fedrad[tensorboard]' ({exc})"
            ) from None
        log_dir = self.directory / run.name
        if state.get("dir") != str(log_dir):
            state = {"dir": str(log_dir), "last_round": 0}  # a new folder holds no round yet
        log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))
        if not state.get("config_logged"):
            self.writer.add_text("run_config", config_markdown(run.params), 0)
            self.writer.flush()
            state["config_logged"] = True
        self.state = state
        return state

    def log_round(self, rnd: int, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        if self.writer is None:
            raise TrackingError("no TensorBoard writer open")
        for key, value in sorted(metrics.items()):
            self.writer.add_scalar(key, value, rnd, walltime=timestamp_ms / 1000)
        self.writer.flush()  # on disk before tracking.json says the round is there

    def finish(self, card: str | None, status: str, last_round: int) -> None:
        if self.writer is None:
            return
        if card and self.state.get("card_round") != last_round:
            self.writer.add_text("model_card", card, last_round)
            self.writer.flush()
            self.state["card_round"] = last_round

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
