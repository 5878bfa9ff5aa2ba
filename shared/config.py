"""Typed, validated configuration shared by the site and the server.

Config is validated once at the edge (CLI flags or YAML) into these pydantic
models; everything inside FedRad receives typed objects. Unknown keys are an
error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

if TYPE_CHECKING:
    from shared.tasks import TaskSpec

LabelKey = Literal["SOPInstanceUID", "StudyInstanceUID", "AccessionNumber", "path"]
LABEL_KEYS: tuple[str, ...] = ("SOPInstanceUID", "StudyInstanceUID", "AccessionNumber", "path")


class ConfigError(Exception):
    """A configuration problem the user must fix; the message names the file and key."""


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class PreprocessConfig(StrictModel):
    """How a decoded DICOM image becomes a model input; part of the cache key and of the model file."""

    image_size: int = Field(64, ge=16, le=1024, description="Side of the square model input, pixels.")
    window_low_pct: float = Field(0.5, ge=0, lt=50, description="Lower intensity percentile mapped to 0.")
    window_high_pct: float = Field(99.5, gt=50, le=100, description="Upper intensity percentile mapped to 1.")

    def cache_tag(self) -> str:
        """A short string that changes whenever any preprocessing parameter changes."""
        return f"s{self.image_size}-w{self.window_low_pct:g}-{self.window_high_pct:g}-v1"


class TaskConfig(StrictModel):
    """What the consortium is learning (consortium.yaml's ``task``): the kind, its outputs (``classes`` or
    ``labels``, whichever the task names them by), input size and architecture. The rules of each kind are its
    task's (:mod:`shared.tasks`); :meth:`spec` is the one typed description that travels from here on."""

    type: str = Field(
        "classification",
        description="The task: classification (one label per image), segmentation "
        "(a mask per segment label, from DICOM SEG files), multilabel (several findings per image), "
        "or a registered plug-in task.",
    )
    classes: list[str] | None = Field(
        None,
        validate_default=True,
        description="Classification: the class names, in label order (default normal, nodule).",
    )
    labels: list[str] | None = Field(
        None,
        validate_default=True,
        description="Segmentation: the DICOM SEG segment names to learn, one output channel each.",
    )
    findings: list[str] | None = Field(
        None,
        validate_default=True,
        description="Multilabel: the findings, one column each in the sites' label CSVs (docs/multilabel.md).",
    )
    uncertain: str | None = Field(
        None,
        description="Multilabel: what an uncertain (-1) label trains as: ignore (masked out, default), ones, zeros.",
    )
    spacing: float | list[float] | str | None = Field(
        None,
        description="3D segmentation: the voxel size every site resamples its volumes to, mm: one number "
        "(isotropic) or [S, P, L] (default 1.5).",
    )
    window: str | None = Field(
        None,
        description="3D segmentation of CT: the intensity window, a preset (soft_tissue, lung, bone, brain) or "
        "'level/width' in HU (default soft_tissue). MR volumes are normalised per volume instead.",
    )
    patches_per_case: int | str | None = Field(
        None, description="3D segmentation: training patches drawn from each volume per epoch (default 4)."
    )
    foreground: float | str | None = Field(
        None, description="3D segmentation: share of patches centred on a segment rather than anywhere (default 0.5)."
    )
    image_size: int = Field(64, ge=16, le=1024)
    model: str = Field(
        "",
        validate_default=True,
        description="Architecture name from the task's registry (classification: "
        "shared.models.MODEL_BUILDERS, default smallcnn; segmentation: "
        "shared.tasks.segmentation.models.SEG_MODEL_BUILDERS, default unet).",
    )
    init_weights: Path | None = Field(
        None,
        description="Weights on the server host to start from (transfer learning): a FedRad model file of "
        "this task, or a plain PyTorch state dict (ImageNet, torchxrayvision, a colleague's checkpoint) mapped "
        "onto the model by shared.weights_import; read locally, never downloaded.",
    )

    @field_validator("type")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from shared.tasks import get_task

        return get_task(v.strip().lower()).name

    @field_validator("classes", "labels", "findings")
    @classmethod
    def _outputs_as_the_task_names_them(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        from shared.tasks import get_task

        if "type" not in info.data:
            return v  # the type itself is wrong; that error names it
        task = get_task(info.data["type"])
        if info.field_name != task.outputs_key:
            if v is not None:
                raise ValueError(
                    f"task.{info.field_name} is not used by a {task.name} task, which names its outputs "
                    f"in task.{task.outputs_key} (remove task.{info.field_name})"
                )
            return None
        if v is None and info.field_name == "classes":
            v = list(DEFAULT_CLASSES)
        return task.check_outputs(list(v or []))

    @field_validator("uncertain", "spacing", "window", "patches_per_case", "foreground")
    @classmethod
    def _setting_of_the_task(cls, v: object, info: ValidationInfo) -> str | None:
        from shared.tasks import get_task

        if v is None or "type" not in info.data:
            return None if v is None else str(v)
        if isinstance(v, list):  # spacing: [S, P, L]
            v = "x".join(f"{float(x):g}" for x in v)
        return dict(get_task(info.data["type"]).check_options({info.field_name: str(v)}))[info.field_name]

    @field_validator("image_size")
    @classmethod
    def _image_size_of_the_task(cls, v: int, info: ValidationInfo) -> int:
        from shared.tasks import get_task

        if "type" in info.data:  # light (no torch): e.g. a 3D patch side must divide by its network's levels
            task = get_task(info.data["type"])
            task.check_image_size(task.default_model, v)
        return v

    @field_validator("model")
    @classmethod
    def _model_of_the_task(cls, v: str, info: ValidationInfo) -> str:
        from shared.tasks import get_task

        if "type" not in info.data:
            return v
        task = get_task(info.data["type"])
        v = v.strip() or task.default_model
        if (
            v != task.default_model and info.data.get("image_size") is not None
        ):  # the default's: _image_size_of_the_task
            task.check_image_size(v, int(info.data["image_size"]))
        if v != task.default_model:  # no torch import for the default (site.yaml checks run in light processes)
            registry = task.model_registry()
            if v not in registry:
                raise ValueError(f"{v!r} is not a {task.name} architecture; use one of {', '.join(sorted(registry))}")
            minimum, size = getattr(registry[v], "min_image_size", 0), info.data.get("image_size")
            if size is not None and size < minimum:  # a builder may say what its strides need
                raise ValueError(f"{v} needs task.image_size of at least {minimum} px, got {size}")
        return v

    @property
    def outputs(self) -> list[str]:
        """What the model's output channels are: the classes, or the segment labels."""
        from shared.tasks import get_task

        return list(getattr(self, get_task(self.type).outputs_key) or [])

    def spec(self) -> TaskSpec:
        """The consortium's task as the one typed description the run config, sites and model files carry."""
        from shared.tasks import TaskSpec, get_task

        task = get_task(self.type)
        options = task.check_options({k: v for k in task.options if (v := getattr(self, k, None)) is not None})
        return TaskSpec(self.type, tuple(self.outputs), self.model, self.image_size, options)

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.image_size)


DEFAULT_CLASSES: tuple[str, ...] = ("normal", "nodule")


def model_names(task_type: str) -> list[str]:
    """Architecture names for a task type (imports torch: called only while validating a task)."""
    from shared.tasks import get_task

    return sorted(get_task(task_type).model_registry())


class SiteDataConfig(StrictModel):
    """Where a site's images and labels are and how they join."""

    data: Path
    labels: Path | None = Field(
        None,
        description="The label CSV (classification). A site that only takes part in "
        "segmentation leaves it out: its labels are the DICOM SEGs in the export.",
    )
    masks: Path | None = Field(
        None,
        description="Segmentation masks as PNG/NIfTI files: a CSV with the key column, "
        "'label' (segment name) and 'mask' (file path relative to the CSV); used instead "
        "of the export's DICOM SEGs when set (shared/imaging/mask_manifest.py).",
    )
    key: LabelKey = "SOPInstanceUID"
    label_column: str = "label"
    classes: list[str] = Field(default_factory=lambda: ["normal", "nodule"], min_length=2)
    findings: list[str] | None = Field(
        None,
        description="Multi-label: the finding columns of the label CSV (1 positive, 0 negative, -1 uncertain, "
        "blank unknown); set, `fedrad-site check` and `start` check them instead of a class column.",
    )
    image_size: int = Field(64, ge=16, le=1024)
    cache_dir: Path | None = Field(None, description="Preprocessed tensor cache; default DATA/../.fedrad-cache.")
    device: str = Field(
        "auto",
        validate_default=True,
        description="What trains: auto (the first GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.",
    )
    threads: int | Literal["auto"] = Field(
        "auto", description="torch CPU threads: auto (every core this process may use) or a number."
    )
    amp: bool = Field(True, description="Mixed precision on a GPU (bf16, or fp16 with loss scaling); never on CPU.")

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, v: object) -> str:
        name = str(v).strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", name):
            raise ValueError("must be auto, cpu, cuda or cuda:N (N the GPU's index, e.g. cuda:1)")
        return name

    @field_validator("threads", mode="before")
    @classmethod
    def _thread_count(cls, v: object) -> int | str:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())):
            raise ValueError("must be auto or a whole number of threads >= 1")
        if int(v) < 1:
            raise ValueError("must be auto or a whole number of threads >= 1")
        return int(v)

    data_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes reading cached images during training and evaluation; default 0 on a CPU "
        "(the training process reads them), up to 4 with a GPU (shared/batches.py).",
    )

    @field_validator("findings")
    @classmethod
    def _finding_names(cls, v: list[str] | None) -> list[str] | None:
        from shared.tasks import get_task

        return None if v is None else get_task("multilabel").check_outputs(list(v))  # the task's naming rules

    @model_validator(mode="after")
    def _check(self) -> SiteDataConfig:
        TaskConfig(classes=self.classes)  # reuse the class-list rules
        return self

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.image_size)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(self.data).resolve().parent / ".fedrad-cache"


def check_host_port(value: str) -> str:
    """Validate 'HOST:PORT' (used by consortium.yaml's address and site.yaml's server_address)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. fedrad.example.org:9443")
    return value


def format_validation_error(err: ValidationError, source: str) -> str:
    """Render pydantic errors as one line per problem, naming the key: 'site.yaml: key 'x': ...'."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{loc}' (check its spelling; see the documented keys)")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{loc}'")
        else:
            lines.append(f"{source}: key '{loc}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping; every failure becomes a ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (check the file's owner and mode)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def parse_model(model_cls: type[StrictModel], data: dict, source: str, base_dir: Path | None = None):
    """Validate ``data`` into ``model_cls``; relative paths are taken relative to ``base_dir``."""
    try:
        obj = model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    if base_dir is not None:
        _resolve_relative_paths(obj, Path(base_dir))
    return obj


def _resolve_relative_paths(obj: BaseModel, base_dir: Path) -> None:
    """Anchor every relative ``Path`` in ``obj`` and its nested sections at ``base_dir``.

    Why recursive: a path inside a section (``crossval.share_local_model``,
    ``task.init_weights``) must mean the same file whichever folder the command
    runs from, exactly like a top-level ``data:``.
    """
    for name, value in list(obj.__dict__.items()):
        if isinstance(value, Path) and not value.is_absolute():
            setattr(obj, name, base_dir / value)
        elif isinstance(value, BaseModel):
            _resolve_relative_paths(value, base_dir)
