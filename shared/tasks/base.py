"""The task seam: what FedRad needs to know about one kind of learning problem, asked in one place.

A :class:`Task` describes one kind of problem (classification, segmentation, …)
to everything else: which architectures it has, how a site's export becomes a
dataset, the loss and augmentation the one training loop
(:func:`shared.training.train_model`) uses, the aggregate metrics a site may
send (and the outbound guard may let through), and the headline metric that the
best checkpoint, crossval, the benchmark and the model card rank by. Outside
``shared/tasks/`` no code branches on a task's name: it asks the task.

A :class:`TaskSpec` is one consortium's task (kind, outputs, architecture,
input size). It is described once and travels unchanged from ``consortium.yaml``
to the run config, the site, checkpoints and the model file.

Adding a task: a folder ``shared/tasks/<name>/`` with a ``Task`` subclass and
one line in :data:`shared.tasks.BUILTIN_TASKS` (or, for a plug-in kept outside
the package, a module named in ``FEDRAD_TASK_PLUGINS`` that calls
:func:`shared.tasks.register_task`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from shared.batches import TrainBatches
    from shared.config import SiteDataConfig

# What a task may support beyond plain training and evaluation; consortium.yaml, the run config and the
# site CLI refuse a setting whose feature the task lacks, naming the task.
FEATURES: dict[str, str] = {
    "image-dp": "per-image differential privacy (dp level: image)",
    "scanner-augment": "scanner-appearance augmentation",
    "stats": "data statistics (fedrad-server stats)",
    "onnx": "graph export (fedrad-server export --format torchscript|onnx)",
    "explain": "saliency maps (fedrad-site evaluate --explain)",
    "finetune": "fine-tuning a global model at a site (fedrad-site finetune)",
    "infer": "results back to PACS as DICOM (fedrad-site infer)",
}

# What ``fedrad-site infer`` writes for a task (:attr:`Task.infer_result`): a Structured Report of coded
# findings with each output's probability, or a DICOM SEG with one segment per output.
INFER_RESULTS = ("findings", "segments")


class TaskDataset(Protocol):
    """What the training loop and the site need of a task's dataset: images, targets, patient groups.

    ``task_name`` (a class attribute) names the dataset's task: :func:`shared.training.train_model` asks that
    task for targets, loss and augmentation, so a dataset is trained the way its task says."""

    task_name: ClassVar[str]
    images: torch.Tensor  # (N, C, *spatial) float32: a tensor, or shared.packed.PackedImages (read per batch)
    groups: list[str]  # patient grouping key per case (site-local; never leaves the site)

    def __len__(self) -> int: ...

    def subset(self, index: Any) -> TaskDataset: ...


class Task:
    """One kind of learning problem. Subclass it, set the class attributes, implement the methods."""

    name: ClassVar[str]
    outputs_key: ClassVar[str]  # config / run-config key naming the outputs: "classes", "labels" or "findings"
    default_model: ClassVar[str]
    headline_metric: ClassVar[str]  # the aggregate metric that ranks rounds and models (higher is better)
    supports: ClassVar[frozenset[str]] = frozenset()  # names from FEATURES
    label_csv: ClassVar[bool] = True  # a site needs a label CSV; False: its labels come with the export (DICOM SEG)
    train_defaults: ClassVar[Mapping[str, Any]] = {}  # TrainConfig values this task prefers (batch_size, lr, ...)
    # The consortium's settings of this task beyond its outputs (task.<name> in consortium.yaml, carried by
    # TaskSpec.options): name → allowed values, the first the default. Multilabel: uncertain (ignore|ones|zeros).
    options: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # What `fedrad-site infer` writes (a name from INFER_RESULTS), for a task that supports "infer": "findings"
    # (predict gives one probability per output and image) or "segments" (a probability map per output).
    infer_result: ClassVar[str | None] = None

    # -- the consortium's description -------------------------------------------------------------
    def check_outputs(self, names: list[str]) -> list[str]:
        """Validate the output names (classes, segment labels…); return them cleaned. ValueError names the rule."""
        names = [str(n).strip() for n in names]
        if not names or any(not n for n in names):
            raise ValueError(f"a {self.name} task needs non-empty output names in task.{self.outputs_key}")
        if len(set(names)) != len(names):
            raise ValueError(f"task.{self.outputs_key} must be unique, got {names}")
        return names

    def check_options(self, given: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The task's settings from ``given`` (missing: the default), sorted pairs; ValueError names the setting."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            has = (
                f"its settings: {', '.join(self.options)}" if self.options else "it has no settings beyond its outputs"
            )
            raise ValueError(f"task.{unknown[0]} is not used by a {self.name} task ({has}); remove it")
        out = []
        for name, allowed in sorted(self.options.items()):
            value = str(given.get(name) or allowed[0]).strip().lower()
            if value not in allowed:
                raise ValueError(f"task.{name} must be one of {', '.join(allowed)}, got {given.get(name)!r}")
            out.append((name, value))
        return tuple(out)

    def model_registry(self) -> Mapping[str, Callable[..., nn.Module]]:
        """Architecture names → builders ``builder(num_outputs, image_size, **kwargs)``."""
        raise NotImplementedError

    def build_model(self, name: str, num_outputs: int, image_size: int, **kwargs: Any) -> nn.Module:
        from shared.models import build_from

        return build_from(
            dict(self.model_registry()), f"{self.name} architecture", name, num_outputs, image_size, **kwargs
        )

    def check_image_size(self, model: str, image_size: int) -> None:
        """ValueError (naming ``task.image_size``) when ``model`` cannot take inputs of ``image_size``; light (no
        torch): consortium.yaml and the run config are checked with it before any model is built."""

    def unsupported(self, feature: str) -> str | None:
        """None when the task supports ``feature``, else the sentence that refuses it."""
        if feature in self.supports:
            return None
        return f"{FEATURES.get(feature, feature)} is not available for {self.name} tasks"

    def input_shape(self, image_size: int) -> tuple[int, ...]:
        """One model input's shape (C, *spatial) at ``image_size``: a 2D task's (1, S, S); a 3D task's patch."""
        return (1, image_size, image_size)

    def describe_output(self) -> str:
        """What the model returns, for model cards and logs."""
        return f"one output per {self.outputs_key[:-1]}"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's outputs as a viewer wants them (an exported graph ends with this)."""
        return logits

    def exported_output(self) -> str:
        """What an exported graph returns, in words (the export's file list)."""
        return (
            "class probabilities" if self.outputs_key == "classes" else f"a probability map per {self.outputs_key[:-1]}"
        )

    def card_preprocessing(self, options: Mapping[str, str]) -> list[str]:
        """Model-card lines on how inputs are prepared beyond :meth:`preprocessing_note` (orientation, spacing...)."""
        return []

    def preprocessing_note(self, image_size: int, options: Mapping[str, str]) -> str:
        """How a DICOM image becomes this task's model input, in words (the model card: inputs must be made so)."""
        return "pad to square, area resample, percentile window"

    def intended_use(self, outputs: list[str]) -> str:
        """The model card's one line of what the model is for."""
        return f"{self.name} of radiographs ({', '.join(outputs)})"

    def summarize(self, metrics: Mapping[str, Any], outputs: list[str]) -> str:
        """One line of a run's aggregate evaluation figures, for the model card."""
        return f"{self.headline_metric} {float(metrics.get(self.headline_metric, float('nan'))):.3f}"

    # -- a site's data ----------------------------------------------------------------------------
    def load_site(self, cfg: SiteDataConfig, outputs: list[str], source: Path) -> TaskDataset:
        """The site's usable, labelled cases for this task; ConfigError (naming ``source``) when too few.

        A task with :attr:`options` also takes them as keyword arguments (:meth:`TaskSpec.load_site` passes them)."""
        raise NotImplementedError

    def split(self, data: TaskDataset, fraction: float, seed: int) -> tuple[TaskDataset, TaskDataset]:
        """(train, held-out) by patient; ValueError when the site is too small to split."""
        raise NotImplementedError

    # -- inference on unlabelled images (fedrad-site infer) --------------------------------------
    def predict(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        """The model's probabilities for unlabelled model inputs, float32: (N, outputs) for a task whose
        :attr:`infer_result` is "findings", (N, outputs, *spatial) maps for "segments"."""
        from shared.training import batched_logits

        return self.probabilities(batched_logits(model, images, 64).float()).numpy().astype("float32", copy=False)

    def decide(self, proba: np.ndarray, threshold: float | list[float] | None) -> np.ndarray:
        """Each output's yes/no from :meth:`predict`'s probabilities at the model file's ``threshold`` (one, or one
        per output; None: 0.5), same shape, bool."""
        import numpy as np

        cut = np.broadcast_to(np.asarray(0.5 if threshold is None else threshold, dtype=np.float64), proba.shape[1:2])
        return proba >= cut.reshape(1, -1, *([1] * (proba.ndim - 2)))

    def decision_rule(self, outputs: list[str], threshold: float | list[float] | None) -> str:
        """How :meth:`decide` turns probabilities into yes/no, in words (written into the result object)."""
        if isinstance(threshold, (list, tuple)):
            cuts = ", ".join(f"{o} {t:.4g}" for o, t in zip(outputs, threshold, strict=True))
            return f"each output present when its probability >= its threshold ({cuts}; the model file's)"
        where = "the model file's threshold" if threshold is not None else "no threshold in the model file"
        return f"each output present when its probability >= {0.5 if threshold is None else threshold:.4g} ({where})"

    def saliency(self, model: nn.Module, images: torch.Tensor, output: int) -> np.ndarray:
        """(N, *spatial) float32 in [0, 1]: where the model looked for ``output`` (a task supporting "explain")."""
        raise NotImplementedError(self.unsupported("explain") or f"{self.name}: no saliency")

    def explain_outputs(self, proba: np.ndarray, decided: np.ndarray) -> list[int]:
        """Which outputs of one image (its row of probabilities and decisions) a saliency map is drawn for."""
        import numpy as np

        present = [int(i) for i in np.flatnonzero(decided)]
        return present or [int(np.argmax(proba))]

    # -- training (the one loop in shared.training asks for these) --------------------------------
    def targets(self, data: TaskDataset) -> torch.Tensor:
        """The training targets of ``data``, indexable like its images."""
        raise NotImplementedError

    def train_batches(self, data: TaskDataset, batch_size: int, pin_memory: bool) -> TrainBatches:
        """What the loop trains on, step by step (:class:`shared.batches.TrainBatches`).

        Default: whole images of ``data.images`` in a seeded permutation per epoch with :meth:`targets` beside
        them (:class:`shared.batches.ImageBatches`). A task whose cases cannot be a batch (3D volumes of
        different shapes) returns its own, e.g. patches drawn from the loop's generator."""
        from shared.batches import ImageBatches

        return ImageBatches(data.images, self.targets(data), batch_size, pin_memory)

    def loss(self, data: TaskDataset, class_weighted: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss ``loss(logits, targets)`` for ``data`` (mean over the batch)."""
        raise NotImplementedError

    def per_image_loss(
        self, data: TaskDataset, class_weighted: bool = True
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The loss per image, unreduced (DP-SGD clips each image's gradient); None: no per-image DP."""
        return None

    def augment(
        self, strength: float, scanner: float
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple]:
        """``augment(x, y, generator) -> (x, y)`` for a training batch; identity by default."""
        return lambda x, y, gen: (x, y)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Correctly predicted cases in a batch (training accuracy); None where accuracy means nothing."""
        return None

    def validation(self, model: nn.Module, data: TaskDataset) -> dict[str, Any]:
        """``val_loss`` and the task's validation figures, recorded in the training history each epoch."""
        raise NotImplementedError

    # -- evaluation and what may leave the site ---------------------------------------------------
    def site_metrics(self, model: nn.Module, data: TaskDataset, seed: int) -> dict[str, float | int]:
        """Aggregate figures of ``model`` on ``data`` that a site may send (never a per-case value)."""
        raise NotImplementedError

    def metric_count_key(self, key: str, outputs: list[str]) -> str | None | bool:
        """The key counting the cases ``key`` was computed over; None for a count itself; False: not this task's."""
        return False

    def evaluate_local(
        self,
        loaded: Any,
        model_path: Path,
        cfg: SiteDataConfig,
        out_dir: Path,
        *,
        n_bootstrap: int = 1000,
        show_progress: bool = True,
        console: Any = None,
        explain: int = 0,
    ) -> dict:
        """``fedrad-site evaluate``: score a model file (``shared.modelfile.LoadedModel``) on the site's labelled
        cases, write the report folder (per-case results: it stays at the site), return the metrics."""
        raise NotImplementedError

    def operating_threshold(self, model: nn.Module, val: TaskDataset) -> float | list[float] | None:
        """The threshold a local model file records, chosen on validation cases (one per output where each output
        is its own yes/no question); None: the task has none."""
        return None

    def local_scores(
        self, model: nn.Module, data: TaskDataset, *, threshold: Any, n_bootstrap: int, seed: int
    ) -> dict[str, Any]:
        """Figures of ``model`` on a site's own test patients, with 95 % CIs (``<key>_ci95``), headline first:
        what ``fedrad-site finetune`` shows before and after (stays at the site)."""
        raise NotImplementedError

    def concat(self, parts: list[TaskDataset]) -> TaskDataset:
        """Several sites' cases as one dataset (the benchmark's pooled arm); patient groups kept apart per site."""
        raise NotImplementedError

    def score(self, model: nn.Module, data: TaskDataset) -> dict[str, float]:
        """The benchmark's figures of ``model`` on ``data``, keys as :meth:`score_keys` (no intervals: fast)."""
        raise NotImplementedError

    def score_keys(self, outputs: list[str]) -> list[str]:
        """The keys :meth:`score` returns, the headline metric first."""
        return [self.headline_metric]

    def output_counts(self, data: TaskDataset) -> dict[str, int]:
        """Cases per output (a class; a segment present), for the coordinator's data statistics."""
        return {}

    def mean_intensities(self, data: TaskDataset) -> np.ndarray:
        """Each case's mean model-input intensity, clipped to [0, 1] (the coordinator's intensity histogram,
        ``fedrad-server stats``); read a batch of images at a time, never all at once."""
        import numpy as np

        batch = 256
        means = [
            data.images[i : i + batch].flatten(1).mean(dim=1).clamp(0.0, 1.0).numpy()
            for i in range(0, len(data), batch)
        ]
        return np.concatenate(means) if means else np.zeros(0)

    def metric_bounds(self, key: str) -> tuple[float, float] | None:
        """The range a valid value of this task's metric ``key`` lies in (the server rejects a reply outside it)."""
        return (0.0, float("inf")) if key.endswith("-examples") else None

    def per_site(self, key: str) -> bool:
        """A site's own figure (e.g. its bootstrap interval): meaningless averaged over sites, kept per site."""
        return False

    def example_metrics(self, outputs: list[str]) -> list[str]:
        """Every aggregate key this task's evaluation may send (docs, tests, the guard's listing)."""
        return []


@dataclass(frozen=True)
class TaskSpec:
    """One consortium's task: kind, output names, architecture, input size. Described once; travels everywhere."""

    type: str
    outputs: tuple[str, ...]
    model: str
    image_size: int
    # The task's settings (Task.options), sorted (name, value) pairs; () = the task's defaults. Not part of
    # equality: a model trained under another setting (e.g. uncertainty policy) still serves the task.
    options: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def task(self) -> Task:
        from shared.tasks import get_task

        return get_task(self.type)

    @property
    def headline_metric(self) -> str:
        return self.task.headline_metric

    def describe(self) -> str:
        settings = "".join(f", {k} {v}" for k, v in self.options)
        return f"a {self.type} {self.model} for {list(self.outputs)} at {self.image_size} px{settings}"

    def build_model(self, **kwargs: Any) -> nn.Module:
        return self.task.build_model(self.model, len(self.outputs), self.image_size, **kwargs)

    def load_site(self, cfg: SiteDataConfig, source: Path) -> TaskDataset:
        """The site's cases for this task (:meth:`Task.load_site`), under the consortium's settings of the task."""
        return self.task.load_site(cfg, list(self.outputs), source, **dict(self.options))

    def model_file_outputs(self) -> dict[str, Any]:
        """``task``, ``classes``, ``labels`` and ``task_options`` as :func:`shared.modelfile.save_model_file` takes
        them: a classification task's outputs are its ``classes``, every other task's its ``labels``."""
        by_labels = self.task.outputs_key != "classes"
        return {
            "task": self.type,
            "classes": [] if by_labels else list(self.outputs),
            "labels": list(self.outputs) if by_labels else None,
            "task_options": dict(self.options),
        }

    def to_run_config(self) -> dict[str, str | int]:
        """The run-config keys that carry the task (see pyproject's [tool.flwr.app.config])."""
        key = self.task.outputs_key
        rc: dict[str, str | int] = {
            "task-type": self.type,
            "classes": "",
            "labels": "",
            "findings": "",
            "model": self.model,
            "image-size": self.image_size,
            "task-options": ",".join(f"{k}={v}" for k, v in self.options),
        }
        rc[key] = ",".join(self.outputs)
        return rc

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> TaskSpec:
        """The task a run config carries; unknown task type or bad outputs: ValueError naming the key."""
        from shared.names import name_list
        from shared.tasks import get_task

        try:
            task = get_task(str(rc.get("task-type", "classification")).strip().lower())
        except ValueError as exc:
            raise ValueError(f"'task-type': {exc}") from None
        try:
            outputs = task.check_outputs(name_list(rc.get(task.outputs_key)))
        except ValueError as exc:
            raise ValueError(f"'{task.outputs_key}' {exc}") from None
        model = str(rc.get("model") or "").strip() or task.default_model
        try:
            pairs = (p.partition("=") for p in name_list(rc.get("task-options")))
            options = task.check_options({k.strip(): v.strip() for k, _, v in pairs})
        except ValueError as exc:
            raise ValueError(f"'task-options' {exc}") from None
        size = int(rc.get("image-size", 64))
        try:
            task.check_image_size(model, size)
        except ValueError as exc:
            raise ValueError(f"'image-size' {exc}") from None
        return cls(task.name, tuple(outputs), model, size, options)

    def mismatch(self, other: TaskSpec) -> str | None:
        """Why a model made for ``other`` does not fit this task; None when it does."""
        for what, mine, theirs in (
            ("task", self.type, other.type),
            ("architecture", self.model, other.model),
            (self.task.outputs_key, list(self.outputs), list(other.outputs)),
            ("image size", self.image_size, other.image_size),
        ):
            if mine != theirs:
                return f"{what} is {theirs!r}, the task needs {mine!r}"
        return None
