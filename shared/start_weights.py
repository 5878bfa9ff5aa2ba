"""The weights a training starts from (``task.init_weights``, ``train-local --init-weights``), whatever the file.

Two kinds of file arrive: a FedRad model file of the same task (a previous run, a public-data model) is used
as it is, after checking it serves the task; any other PyTorch file is a plain state dict brought from outside
and goes through :mod:`shared.weights_import`. Either way the caller gets the state dict and one plain-value
record of where it came from, which every model file trained from it keeps in its provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.modelfile import FORMAT, load_model_file
from shared.tasks import TaskSpec
from shared.weights_import import (
    ImportReport,
    WeightsImportError,
    file_sha256,
    import_state_dict,
    read_torch_file,
    unwrap_state_dict,
)


@dataclass
class StartWeights:
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any]  # plain values: kept as provenance.extra.init_weights of what is trained from it
    report: ImportReport | None = None  # a plain state dict's import report (None for a FedRad model file)
    model_file: str = ""  # the FedRad model file read, when it was one
    weights_sha256: str = ""  # … and its weights' digest

    def lines(self, full_report: str = "") -> list[str]:
        """What to print: the import report, or one line naming the FedRad model file."""
        if self.report is not None:
            return self.report.lines(full_report)
        line = f"init weights: FedRad model file {self.model_file} (weights sha256 {self.weights_sha256[:16]}…)"
        if self.provenance.get("kind") == "state-dict":
            line += f", imported from {self.provenance.get('file')}"
        return [line]


def load_start_weights(path: str | Path, task: TaskSpec, model: nn.Module | None = None) -> StartWeights:
    """``path``'s weights for ``task``'s model; a plain state dict is imported into ``model`` (built for the task
    when None; its fresh initialisation is what the head and anything unplaced keep). Every problem is a
    :class:`~shared.weights_import.WeightsImportError` naming the file."""
    path = Path(path)
    doc = read_torch_file(path)
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        loaded = load_model_file(path)
        mismatch = loaded.task_mismatch(task)
        if mismatch:
            raise WeightsImportError(f"{path}: {mismatch}; the task is {task.describe()}")
        extra = loaded.provenance.get("extra") or {}
        record = extra.get("imported_from") or {  # a converted state dict: its import is the start's story
            "kind": "fedrad-model",
            "file": str(path),
            "weights_sha256": loaded.weights_sha256,
            "trained_by": loaded.provenance.get("trained_by"),
        }
        state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        return StartWeights(state, dict(record), model_file=str(path), weights_sha256=loaded.weights_sha256)
    state, container = unwrap_state_dict(doc, str(path))
    model = model if model is not None else task.build_model()
    report = import_state_dict(
        model, state, architecture=task.model, source=str(path), sha256=file_sha256(path), container=container
    )
    return StartWeights({k: v.detach().clone() for k, v in model.state_dict().items()}, report.to_dict(), report)
