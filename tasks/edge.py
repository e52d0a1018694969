"""Edges / texture (``edge_texture``): one regressed map, every pixel labelled."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tasks.base import Task, check_same_shape
from utils.config import ExperimentConfig

#: The study's Huber threshold: quadratic below 0.2, linear above.
HUBER_DELTA = 0.2


class EdgeMetric(Metric):
    """``abs_err`` = mean|p−g| over all pixels of the split (the study's version skipped g = 0)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("abs_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target``: N x 1 x H x W."""
        check_same_shape(pred, target, "edge_texture")
        self.abs_sum += (pred - target).abs().sum(dtype=torch.float64)
        self.count += target.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"abs_err": self.abs_sum / self.count}


class EdgeTask(Task):
    """Huber loss (delta 0.2) averaged over all pixels, as in the study."""

    head_kind = "dense"
    primary_metric = "abs_err"
    higher_is_better = MappingProxyType({"abs_err": False})
    delta_m_metrics = ("abs_err",)

    def __init__(self, name: str) -> None:
        super().__init__(name, 1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        check_same_shape(pred, target, self.name)
        return F.huber_loss(pred, target, delta=HUBER_DELTA)

    def output_prior(self, targets: Tensor) -> Tensor | None:
        """The median edge value, near the best constant under a Huber loss with a small delta."""
        return targets.median().reshape(1)

    def metric(self) -> EdgeMetric:
        return EdgeMetric()


def build(name: str, cfg: ExperimentConfig, positive_rates: Mapping[str, float]) -> EdgeTask:
    """The edge task."""
    return EdgeTask(name)
