"""Tasks by the study's names: what each predicts, its loss, its metrics and their directions.

A new task kind is one module here with a ``build(name, cfg, positive_rates)`` function and a
line in :data:`TASKS` (exact names) or :data:`PREFIXED_TASKS` (families such as ``class_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from data.celeba_format import CELEBA_TASK_ALIASES
from tasks import attribute, depth, edge, normals, segmentation
from tasks.base import Task
from utils.config import ExperimentConfig
from utils.errors import ConfigError

__all__ = ["PREFIXED_TASKS", "TASKS", "Task", "build", "directions", "kind", "names", "primary_metrics"]

TaskBuilder = Callable[[str, ExperimentConfig, Mapping[str, float]], Task]

#: Exact task name -> builder.
TASKS: Mapping[str, TaskBuilder] = MappingProxyType({
    "segmentsemantic": segmentation.build,
    "depth_euclidean": depth.build,
    "surface_normal": normals.build,
    "edge_texture": edge.build,
})
#: Name prefix -> builder of that task family.
PREFIXED_TASKS: Mapping[str, TaskBuilder] = MappingProxyType({attribute.PREFIX: attribute.build})


def names() -> tuple[str, ...]:
    """The task names known by name: the dense tasks, then the study's attribute aliases.

    Any ``class_<CelebA attribute>`` (e.g. ``class_Young``) is accepted as well.
    """
    return (*TASKS, *CELEBA_TASK_ALIASES)


def build(cfg: ExperimentConfig, *, positive_rates: Mapping[str, float] | None = None) -> dict[str, Task]:
    """The tasks of ``cfg.task_list``, in that order.

    ``positive_rates`` (task -> share of positive training images) feed the attribute losses'
    ``pos_weight`` when ``cfg.class_balance`` is on.
    """
    rates = MappingProxyType(dict(positive_rates or {}))
    return {name: _builder(name)(name, cfg, rates) for name in cfg.task_list}


def kind(name: str) -> type[Task]:
    """The Task class of ``name``: what it computes and which way is better, without building it."""
    return _KINDS[_builder(name)]


def directions(names: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Per task, ``{metric: higher_is_better}`` for the metrics Δm and "best" choices count (``Task.delta_m_metrics``)."""
    return {name: {metric: kind(name).higher_is_better[metric] for metric in kind(name).delta_m_metrics} for name in names}


def primary_metrics(names: Iterable[str]) -> dict[str, str]:
    """Per task, the metric that early stopping, summaries and figures watch."""
    return {name: kind(name).primary_metric for name in names}


def _builder(name: str) -> TaskBuilder:
    if name in TASKS:
        return TASKS[name]
    for prefix, builder in PREFIXED_TASKS.items():
        if name.startswith(prefix):
            return builder
    expected = [*TASKS, *(f"{prefix}<attribute>" for prefix in PREFIXED_TASKS)]
    raise ConfigError(f"task_list: unknown task {name!r}; expected one of {expected}")


#: Builder -> the Task class it returns.
_KINDS: Mapping[TaskBuilder, type[Task]] = MappingProxyType({
    segmentation.build: segmentation.SegmentationTask,
    depth.build: depth.DepthTask,
    normals.build: normals.NormalsTask,
    edge.build: edge.EdgeTask,
    attribute.build: attribute.AttributeTask,
})
