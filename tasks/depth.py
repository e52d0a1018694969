"""Depth (``depth_euclidean``): one map of metres (or per-image-max-normalised depth), 0 = no measurement."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import Tensor
from torchmetrics import Metric

from tasks.base import Task, check_same_shape, masked_mean
from utils.config import ExperimentConfig


class DepthMetric(Metric):
    """Errors over the valid pixels (target > 0) of the whole split, pooled pixel-wise.

    ``abs_err`` = mean|p−g|, ``rel_err`` = mean|p−g|/g, ``rmse`` = √mean(p−g)² (NYU protocol);
    ``abs_err_norm`` and ``rmse_norm`` are the study's: p and g divided by the image's maximum g.
    """

    full_state_update = False
    is_differentiable = False

    _SUMS = ("abs", "rel", "sq", "abs_norm", "sq_norm")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for key in self._SUMS:
            self.add_state(f"{key}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target``: N x 1 x H x W."""
        check_same_shape(pred, target, "depth_euclidean")
        valid = target > 0
        zero = pred.new_zeros(())
        error = (pred - target).abs()
        image_max = target.amax(dim=tuple(range(1, target.dim())), keepdim=True)
        image_max = image_max.clamp(min=torch.finfo(target.dtype).tiny)
        per_pixel = {
            "abs": error,
            "rel": error / torch.where(valid, target, 1.0),
            "sq": error.square(),
            "abs_norm": error / image_max,
            "sq_norm": (error / image_max).square(),
        }
        for key, values in per_pixel.items():
            state = getattr(self, f"{key}_sum")
            state += torch.where(valid, values, zero).sum(dtype=torch.float64)
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        return {
            "abs_err": self.abs_sum / self.count,
            "rel_err": self.rel_sum / self.count,
            "rmse": (self.sq_sum / self.count).sqrt(),
            "abs_err_norm": self.abs_norm_sum / self.count,
            "rmse_norm": (self.sq_norm_sum / self.count).sqrt(),
        }


class DepthTask(Task):
    """Masked MSE (the study's ``DepthMSELoss``) or L1 over the valid pixels (target > 0).

    With ``sigmoid`` the prediction is sigmoid(output), as the study's model wrapper did for
    depth normalised by its per-image maximum (values in (0, 1]).
    """

    head_kind = "dense"
    primary_metric = "abs_err"
    higher_is_better = MappingProxyType(
        {"abs_err": False, "rel_err": False, "rmse": False, "abs_err_norm": False, "rmse_norm": False}
    )
    delta_m_metrics = ("abs_err", "rel_err")

    def __init__(self, name: str, *, squared: bool = True, sigmoid: bool = False) -> None:
        super().__init__(name, 1)
        self.squared = squared
        self.sigmoid = sigmoid

    def predict(self, output: Tensor) -> Tensor:
        return output.sigmoid() if self.sigmoid else output

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        check_same_shape(pred, target, self.name)
        error = pred - target
        return masked_mean(error.square() if self.squared else error.abs(), target > 0)

    def output_prior(self, targets: Tensor) -> Tensor | None:
        """The bias whose prediction is the mean valid depth for MSE (the median for L1): the best constant."""
        valid = targets[targets > 0]
        if valid.numel() == 0:
            return None
        best = valid.mean() if self.squared else valid.median()
        if self.sigmoid:
            best = torch.logit(best.clamp(1e-3, 1 - 1e-3))
        return best.reshape(1)

    def metric(self) -> DepthMetric:
        return DepthMetric()


def build(name: str, cfg: ExperimentConfig, positive_rates: Mapping[str, float]) -> DepthTask:
    """The depth task of ``cfg``: ``depth_loss`` (study: mse) and the study's sigmoid on normalised depth."""
    return DepthTask(name, squared=cfg.depth_loss == "mse", sigmoid=cfg.depth_output == "sigmoid")
