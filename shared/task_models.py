"""One entry point that builds the network for a task type, so the server, the sites and model files agree.

Classification and segmentation keep separate registries
(:data:`shared.models.MODEL_BUILDERS`, :data:`shared.segmentation_model.SEG_MODEL_BUILDERS`)
because their outputs differ; everything that only knows "the task" (the
ServerApp's initial model, a site's global model, a model file) builds through
here instead of choosing a registry itself.
"""

from __future__ import annotations

from torch import nn

from shared.models import build_model

TASK_TYPES: tuple[str, ...] = ("classification", "segmentation")


def build_task_model(task_type: str, name: str, outputs: int, image_size: int, **kwargs) -> nn.Module:
    """``outputs`` classes (classification) or segment labels (segmentation) on (B, 1, S, S) inputs."""
    if task_type == "segmentation":
        from shared.segmentation_model import build_seg_model

        return build_seg_model(name, outputs, image_size, **kwargs)
    if task_type != "classification":
        raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    return build_model(name, outputs, image_size, **kwargs)


def model_registry(task_type: str) -> dict:
    """The architecture registry of a task type (names → builders)."""
    if task_type == "segmentation":
        from shared.segmentation_model import SEG_MODEL_BUILDERS

        return SEG_MODEL_BUILDERS
    from shared.models import MODEL_BUILDERS

    return MODEL_BUILDERS
