"""Typed, validated configuration shared by the site and the server.

Config is validated once at the edge (CLI flags or YAML) into these pydantic
models; everything inside FedRad receives typed objects. Unknown keys are an
error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

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


TaskType = Literal["classification", "segmentation"]
DEFAULT_MODELS: dict[str, str] = {"classification": "smallcnn", "segmentation": "unet"}
# Segment labels become metric keys (``dice-<label>``, client/outbound_guard.py), so no '-' or spaces.
SEGMENT_LABEL_PATTERN = r"^[A-Za-z0-9_.]{1,40}$"


class TaskConfig(StrictModel):
    """What the consortium is learning: task type, class list (classification) or segment labels
    (segmentation), input size and architecture."""

    type: TaskType = Field("classification", description="classification (one label per image) or segmentation "
                           "(a mask per segment label, from DICOM SEG files).")  # fmt: skip
    classes: list[str] = Field(default_factory=lambda: ["normal", "nodule"], min_length=2)
    labels: list[str] | None = Field(None, validate_default=True, description="Segmentation: the DICOM SEG segment "
                                     "names to learn, one output channel each.")  # fmt: skip
    image_size: int = Field(64, ge=16, le=1024)
    model: str = Field("", validate_default=True, description="Architecture name: shared.models.MODEL_BUILDERS "
                       "(classification, default smallcnn) or shared.segmentation_model.SEG_MODEL_BUILDERS "
                       "(segmentation, default unet).")  # fmt: skip
    init_weights: Path | None = Field(None, description="A FedRad model file on the server host to start from "
                                      "(transfer learning); read locally, never downloaded.")  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _classes_only_for_classification(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("type") == "segmentation" and "classes" in data:
            raise ValueError("task.classes is for classification; a segmentation task names its segments in "
                             "task.labels (remove task.classes)")  # fmt: skip
        return data

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        v = [c.strip() for c in v]
        if any(not c for c in v):
            raise ValueError("class names must be non-empty")
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_for_segmentation(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        task_type = info.data.get("type", "classification")
        if task_type != "segmentation":
            if v is not None:
                raise ValueError("task.labels is for segmentation (set task.type: segmentation); a classification "
                                 "task lists its classes in task.classes")  # fmt: skip
            return None
        if not v:
            raise ValueError("a segmentation task needs its segment names, e.g. labels: [nodule, lung] (the "
                             "SegmentLabel of the DICOM SEG segments)")  # fmt: skip
        v = [str(x).strip() for x in v]
        bad = [x for x in v if not re.match(SEGMENT_LABEL_PATTERN, x) or x == "mean"]
        if bad:
            raise ValueError(f"segment labels {bad} must be 1-40 letters, digits, '_' or '.' and not 'mean' "
                             "(they name metrics such as dice-<label>)")  # fmt: skip
        if len(set(v)) != len(v):
            raise ValueError(f"segment labels must be unique, got {v}")
        return v

    @field_validator("model")
    @classmethod
    def _model_for_task(cls, v: str, info: ValidationInfo) -> str:
        task_type = info.data.get("type", "classification")
        v = v.strip() or DEFAULT_MODELS[task_type]
        if v == DEFAULT_MODELS[task_type]:
            return v  # no torch import for the default (site.yaml validation runs in light processes)
        known = model_names(task_type)
        if v not in known:
            raise ValueError(f"{v!r} is not a {task_type} architecture; use one of {', '.join(known)}")
        return v

    @property
    def outputs(self) -> list[str]:
        """What the model's output channels are: the classes, or the segment labels."""
        return list(self.labels or []) if self.type == "segmentation" else list(self.classes)

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.image_size)


def model_names(task_type: str) -> list[str]:
    """Architecture names for a task type (imports torch: called only while validating a task)."""
    from shared.task_models import model_registry

    return sorted(model_registry(task_type))


class SiteDataConfig(StrictModel):
    """Where a site's images and labels are and how they join."""

    data: Path
    labels: Path | None = Field(None, description="The label CSV (classification). A site that only takes part in "
                                "segmentation leaves it out: its labels are the DICOM SEGs in the export.")  # fmt: skip
    masks: Path | None = Field(None, description="Segmentation masks as PNG/NIfTI files: a CSV with the key column, "
                               "'label' (segment name) and 'mask' (file path relative to the CSV); used instead "
                               "of the export's DICOM SEGs when set (shared/imaging/mask_manifest.py).")  # fmt: skip
    key: LabelKey = "SOPInstanceUID"
    label_column: str = "label"
    classes: list[str] = Field(default_factory=lambda: ["normal", "nodule"], min_length=2)
    image_size: int = Field(64, ge=16, le=1024)
    cache_dir: Path | None = Field(None, description="Preprocessed tensor cache; default DATA/../.fedrad-cache.")

    @model_validator(mode="after")
    def _check(self) -> "SiteDataConfig":
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
        for name, value in list(obj.__dict__.items()):
            if isinstance(value, Path) and not value.is_absolute():
                setattr(obj, name, (base_dir / value))
    return obj
