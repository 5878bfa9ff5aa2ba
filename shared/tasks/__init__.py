"""The task registry: every kind of learning problem FedRad trains, by name.

Built-in tasks are imported on first use (they pull in torch and, for
segmentation, MONAI). A task kept outside this package registers itself from a
module named in the ``FEDRAD_TASK_PLUGINS`` environment variable (comma
separated): the site's and the server's operators choose what code runs, never
a run config. See :mod:`shared.tasks.base` for the protocol.
"""

from __future__ import annotations

import importlib
import os

from shared.tasks.base import FEATURES, INFER_RESULTS, Task, TaskSpec

__all__ = ["FEATURES", "INFER_RESULTS", "Task", "TaskSpec", "get_task", "register_task", "task_names"]

# name → module holding the task's ``TASK``: one line per built-in task.
BUILTIN_TASKS: dict[str, str] = {
    "classification": "shared.tasks.classification",
    "segmentation": "shared.tasks.segmentation",
    "multilabel": "shared.tasks.multilabel",
    "segmentation3d": "shared.tasks.segmentation3d",
}
PLUGINS_ENV = "FEDRAD_TASK_PLUGINS"

_registry: dict[str, Task] = {}
_plugins_loaded = False


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (a plug-in module calls this at import)."""
    _registry[task.name] = task
    return task


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)


def task_names() -> list[str]:
    """Every task type a config may name."""
    _load_plugins()
    return sorted(set(BUILTIN_TASKS) | set(_registry))


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError naming the known ones for any other."""
    if name not in _registry and name in BUILTIN_TASKS:
        register_task(importlib.import_module(BUILTIN_TASKS[name]).TASK)
    if name not in _registry:
        _load_plugins()
    if name not in _registry:
        raise ValueError(f"unknown task type {name!r}; known: {', '.join(task_names())}")
    return _registry[name]
