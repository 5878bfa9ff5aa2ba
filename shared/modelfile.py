"""One self-describing file per trained model: weights plus everything needed to use them.

A model file travels between hospitals and the consortium, so it must be safe
to open and impossible to misuse silently. It is a ``torch.save`` of a dict of
plain types and tensors, read back with ``torch.load(weights_only=True)`` (no
pickled code runs), and it carries the architecture, class list, input size,
preprocessing, operating threshold and provenance, with a SHA-256 over the
weights that is checked on every load.

Layout (format_version 1)::

    format: "fedrad-model"          format_version: 1
    architecture: {name, kwargs}    num_classes, classes, input_size [1, S, S]
    preprocess: PreprocessConfig    threshold: float | [float per output] | None
    state_dict: {key: tensor}
    provenance: {trained_by, kind: local|federated, rounds, epochs, created (UTC ISO),
                 fedrad_version, weights_sha256, extra: dict}
    task: a task name of shared.tasks           (absent in older files: classification)
    labels: [output names]                      (every task but classification, e.g. segmentation's
                                                 labels or multilabel's findings; classes is then []
                                                 and the architecture comes from that task's registry)
    task_options: {name: value}                 (the task's settings it was trained under, e.g.
                                                 multilabel's uncertain; absent: the task's defaults)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from shared.config import PreprocessConfig
from shared.tasks import TaskSpec, get_task

FORMAT = "fedrad-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "format_version",
    "architecture",
    "num_classes",
    "classes",
    "input_size",
    "preprocess",
    "threshold",
    "state_dict",
    "provenance",
)
PROVENANCE_KEYS = ("trained_by", "kind", "rounds", "epochs", "created", "fedrad_version", "weights_sha256", "extra")
PROVENANCE_KINDS = ("local", "federated", "finetuned", "imported")
# finetuned: a global model adapted at one site; imported: a plain state dict mapped onto the architecture
# (shared.weights_import), the start of a run, its import report under extra.imported_from


class ModelFileError(Exception):
    """A model file cannot be used; the message names the file and the problem."""


@dataclass
class LoadedModel:
    """A verified model file: the model is built, loaded and in eval mode."""

    model: nn.Module
    classes: list[str]
    preprocess: PreprocessConfig
    threshold: float | list[float] | None  # a list: one threshold per output (multilabel: per finding)
    provenance: dict
    architecture: str
    arch_kwargs: dict = field(default_factory=dict)
    weights_sha256: str = ""
    task: str = "classification"
    labels: list[str] = field(default_factory=list)  # every task but classification: its output names
    task_options: dict[str, str] = field(default_factory=dict)  # the task's settings it was trained under

    @property
    def outputs(self) -> list[str]:
        """Names of the output channels: the classes, or the task's other output names (segment labels, findings)."""
        return list(self.classes if get_task(self.task).outputs_key == "classes" else self.labels)

    @property
    def spec(self) -> TaskSpec:
        """The task this model serves (with the settings it was trained under)."""
        kind = get_task(self.task)
        return TaskSpec(
            self.task,
            tuple(self.outputs),
            self.architecture,
            self.preprocess.image_size,
            kind.check_options({k: v for k, v in self.task_options.items() if k in kind.options}),
        )

    def task_mismatch(self, task: TaskSpec) -> str | None:
        """Why this model cannot serve ``task`` (type, architecture, outputs, input size), e.g.
        "a classification resnet18 for [...] at 64 px"; None when it can."""
        return None if self.spec == task else self.spec.describe()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors sorted by key: name, dtype, shape and raw bytes of each.

    Independent of device and of key insertion order, so the same weights give
    the same digest at every site and on the server.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fedrad_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedrad")
    except PackageNotFoundError:
        return "unknown"


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Reject values that ``torch.load(weights_only=True)`` would refuse, at save time rather than load time."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise ValueError(
        f"{where}: {type(value).__name__} cannot be stored in a model file; use str/int/float/bool/list/dict"
    )


def _state_dict_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any]) -> str | None:
    """The first difference between an architecture's state dict and a file's, in words; None if they match."""
    for key, ref in expected.items():
        if key not in got:
            return f"key {key!r} is missing from the file"
        t = got[key]
        if not isinstance(t, torch.Tensor):
            return f"key {key!r} holds {type(t).__name__}, not a tensor"
        if tuple(t.shape) != tuple(ref.shape):
            return f"key {key!r} has shape {list(t.shape)} in the file but {list(ref.shape)} in the architecture"
    for key in got:
        if key not in expected:
            return f"the file has key {key!r}, which the architecture does not have"
    return None


def save_model_file(
    path: str | os.PathLike,
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    architecture: str,
    arch_kwargs: dict,
    classes: list[str],
    preprocess: PreprocessConfig,
    threshold: float | None,
    provenance: dict,
    labels: list[str] | None = None,
    task: str | None = None,
    task_options: Mapping[str, str] | None = None,
) -> str:
    """Write a model file atomically and return its weights SHA-256.

    ``provenance`` gives ``trained_by`` and ``kind`` ("local" or "federated"),
    optionally ``rounds``, ``epochs`` and ``extra``; ``created``,
    ``fedrad_version`` and ``weights_sha256`` are filled in here. The weights
    are checked against a freshly built ``architecture`` so every saved file
    can be loaded. ``task`` names the task (default: segmentation when ``labels`` are given, else
    classification); every task but classification names its outputs in ``labels`` and has no ``classes``.
    ``threshold`` is one probability, or one per output; ``task_options`` the task's settings (:attr:`Task.options`).
    """
    classes = [str(c) for c in classes]
    kind = get_task(task or ("classification" if labels is None else "segmentation"))
    by_labels = kind.outputs_key != "classes"
    outputs = [str(x) for x in (labels if by_labels else classes) or []]
    if by_labels and (classes or not outputs):
        raise ValueError(f"a {kind.name} model file has output labels and no classes")
    options = dict(kind.check_options(dict(task_options or {})))
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    ref = kind.build_model(architecture, len(outputs), preprocess.image_size, **arch_kwargs).state_dict()
    problem = _state_dict_mismatch(ref, state)
    if problem:
        raise ValueError(f"weights do not match architecture {architecture!r}: {problem}")
    if isinstance(threshold, (list, tuple)):
        threshold = [float(t) for t in threshold]
        if len(threshold) != len(outputs) or not all(0.0 <= t <= 1.0 for t in threshold):
            raise ValueError(
                f"threshold must be one probability in [0, 1] per output ({len(outputs)}), got {threshold}"
            )
    elif threshold is not None:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1] or None, got {threshold}")
    unknown = set(provenance) - {"trained_by", "kind", "rounds", "epochs", "extra"}
    if unknown:
        raise ValueError(f"unknown provenance key(s) {sorted(unknown)}; put additional facts under 'extra'")
    for key in ("trained_by", "kind"):
        if not provenance.get(key):
            raise ValueError(f"provenance needs {key!r}")
    if provenance["kind"] not in PROVENANCE_KINDS:
        raise ValueError(f"provenance kind must be one of {PROVENANCE_KINDS}, got {provenance['kind']!r}")

    digest = weights_sha256(state)
    prov = {
        "trained_by": str(provenance["trained_by"]),
        "kind": provenance["kind"],
        "rounds": provenance.get("rounds"),
        "epochs": provenance.get("epochs"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fedrad_version": _fedrad_version(),
        "weights_sha256": digest,
        "extra": dict(provenance.get("extra") or {}),
    }
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": architecture, "kwargs": dict(arch_kwargs)},
        "num_classes": len(classes),
        "classes": classes,
        "input_size": [1, preprocess.image_size, preprocess.image_size],
        "preprocess": preprocess.model_dump(mode="json"),
        "threshold": threshold,
        "provenance": prov,
        "task": kind.name,
    }
    if by_labels:
        doc["labels"] = outputs
    if kind.options:
        doc["task_options"] = options
    _check_plain(doc, "model file")
    doc["state_dict"] = state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(doc, fh)
        os.replace(tmp, path)  # readers never see a half-written model
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _read(path: Path) -> Any:
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, expected a model file")
    is_zip = False
    try:
        with path.open("rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise ModelFileError(f"{path}: permission denied (check the file's owner and mode)") from None
    except Exception as exc:  # torch raises many types for foreign or damaged files; say which case it is
        if not is_zip:
            why = "it is not a PyTorch file at all"
        elif isinstance(exc, pickle.UnpicklingError):
            why = "it holds Python objects other than tensors and plain values, which FedRad never unpickles"
        else:
            why = "the PyTorch archive is damaged or truncated; get a fresh copy"
        raise ModelFileError(f"{path}: not a FedRad model file ({why})") from None


def load_model_file(path: str | os.PathLike) -> LoadedModel:
    """Read, verify and build the model in ``path``; every problem is a :class:`ModelFileError`."""
    path = Path(path)
    doc = _read(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        hint = ""
        if isinstance(doc, dict) and doc and all(isinstance(v, torch.Tensor) for v in doc.values()):
            hint = " (it looks like a plain PyTorch state dict with no architecture, classes or preprocessing)"
        raise ModelFileError(f"{path}: not a FedRad model file{hint}; expected 'format: {FORMAT}'")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: unsupported format_version {version!r}; this FedRad reads version {FORMAT_VERSION}"
            + (" (upgrade FedRad to read newer files)" if isinstance(version, int) and version > FORMAT_VERSION else "")
        )
    for key in REQUIRED_KEYS:
        if key not in doc:
            raise ModelFileError(f"{path}: missing metadata key {key!r}")
    prov, arch = doc["provenance"], doc["architecture"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise ModelFileError(f"{path}: missing metadata key 'architecture.name'")
    if not isinstance(prov, dict):
        raise ModelFileError(f"{path}: metadata key 'provenance' must be a mapping")
    for key in PROVENANCE_KEYS:
        if key not in prov:
            raise ModelFileError(f"{path}: missing metadata key 'provenance.{key}'")

    try:
        preprocess = PreprocessConfig.model_validate(doc["preprocess"])
    except ValidationError as err:
        raise ModelFileError(f"{path}: invalid 'preprocess' metadata: {err.errors()[0]['msg']}") from None
    classes = doc["classes"]
    if not isinstance(classes, list) or len(classes) != doc["num_classes"]:
        raise ModelFileError(f"{path}: 'classes' ({classes!r}) does not match num_classes {doc['num_classes']!r}")
    size = preprocess.image_size
    if list(doc["input_size"]) != [1, size, size]:
        raise ModelFileError(f"{path}: input_size {doc['input_size']!r} does not match preprocess image_size {size}")

    task = doc.get("task", "classification")
    try:
        kind = get_task(str(task))
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    by_labels = kind.outputs_key != "classes"
    labels = doc.get("labels") if by_labels else []
    if not isinstance(labels, list) or (by_labels and not labels):
        raise ModelFileError(f"{path}: a {task} model file needs 'labels' (its output names), got {labels!r}")
    outputs = labels if by_labels else classes
    options = doc.get("task_options") or {}
    try:
        if not isinstance(options, dict):
            raise ValueError(f"'task_options' must be a mapping, got {options!r}")
        options = dict(kind.check_options(options))
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    name, kwargs = arch["name"], dict(arch.get("kwargs") or {})
    registry = kind.model_registry()
    if name not in registry:
        raise ModelFileError(
            f"{path}: {task} architecture {name!r} is not known to this FedRad (known: {', '.join(sorted(registry))})"
        )
    state = doc["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: metadata key 'state_dict' must be a mapping of tensors")
    try:
        actual = weights_sha256(state)
    except TypeError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    if actual != prov["weights_sha256"]:
        raise ModelFileError(
            f"{path}: weights sha256 mismatch (recorded {str(prov['weights_sha256'])[:16]}…, "
            f"actual {actual[:16]}…): the file is corrupted or was modified after it was written"
        )
    try:
        model = kind.build_model(name, len(outputs), size, **kwargs)
    except ValueError as exc:
        raise ModelFileError(f"{path}: cannot build architecture: {exc}") from None
    problem = _state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise ModelFileError(f"{path}: state dict does not match architecture {name!r}: {problem}")
    model.load_state_dict(state)
    model.eval()
    return LoadedModel(
        model=model,
        classes=[str(c) for c in classes],
        preprocess=preprocess,
        threshold=doc["threshold"],
        provenance=dict(prov),
        architecture=name,
        arch_kwargs=kwargs,
        weights_sha256=actual,
        task=task,
        labels=[str(x) for x in labels],
        task_options=options,
    )
