"""Surface normals (``surface_normal``): three raw channels per pixel, compared after L2 normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tasks.base import Task, check_same_shape, masked_mean
from utils.config import ExperimentConfig

#: Angle thresholds (degrees) of the ``within_*`` metrics, as in the MTL literature.
THRESHOLDS = (11.25, 22.5, 30.0, 45.0)
#: Histogram bin width (degrees) behind the split-level median: exact to half a bin.
MEDIAN_BIN = 0.01


def _valid(target: Tensor) -> Tensor:
    """N x H x W: pixels whose target normal is not the all-zero vector."""
    return target.ne(0).any(dim=1)


def _cosine(pred: Tensor, target: Tensor) -> Tensor:
    """N x H x W cosine between the L2-normalised prediction and target."""
    return (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)


class NormalsMetric(Metric):
    """Angular errors θ = arccos(clamp(⟨p̂, ĝ⟩, −1, 1)) in degrees over the valid pixels of the split.

    ``mean``, ``rmse`` and ``median`` of θ; ``within_<t>`` = percentage (0–100) of pixels with
    θ < t; ``cos_sim`` = mean cosine. The median comes from a histogram of 0.01° bins (bin
    centres, so within 0.005° of the exact value), which sums across processes like the rest.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_bins = round(180.0 / MEDIAN_BIN)
        for key in ("angle_sum", "angle_sq_sum", "cos_sum"):
            self.add_state(key, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("within", torch.zeros(len(THRESHOLDS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(self.num_bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: N x 3 x H x W (any norm); ``target``: N x 3 x H x W unit vectors, zero = invalid."""
        check_same_shape(pred, target, "surface_normal")
        valid = _valid(target)
        cosine = _cosine(pred, target).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cosine))
        zero = angle.new_zeros(())
        self.angle_sum += torch.where(valid, angle, zero).sum(dtype=torch.float64)
        self.angle_sq_sum += torch.where(valid, angle.square(), zero).sum(dtype=torch.float64)
        self.cos_sum += torch.where(valid, cosine, zero).sum(dtype=torch.float64)
        self.count += valid.sum()
        below = torch.stack([(angle < threshold) & valid for threshold in THRESHOLDS])
        self.within += below.flatten(1).sum(1)
        # Invalid pixels go to an overflow bin that is dropped: no boolean indexing, no host sync.
        bins = (angle / MEDIAN_BIN).long().clamp(0, self.num_bins - 1)
        index = torch.where(valid, bins, self.num_bins).flatten()
        counts = torch.zeros(self.num_bins + 1, dtype=torch.long, device=index.device)
        self.histogram += counts.scatter_add_(0, index, torch.ones_like(index))[:-1]

    def compute(self) -> dict[str, Tensor]:
        count = self.count.double()
        result = {
            "mean": self.angle_sum / count,
            "median": self._median(),
            "rmse": (self.angle_sq_sum / count).sqrt(),
        }
        for threshold, hits in zip(THRESHOLDS, self.within):
            result[f"within_{threshold:g}"] = 100.0 * hits.double() / count
        result["cos_sim"] = self.cos_sum / count
        return result

    def _median(self) -> Tensor:
        """Mean of the bin centres holding the two middle ranks (one rank for an odd count)."""
        cumulative = self.histogram.cumsum(0)
        ranks = torch.stack([(self.count - 1) // 2, self.count // 2])
        bins = torch.searchsorted(cumulative, ranks, right=True).clamp(max=self.num_bins - 1)
        return ((bins.double() + 0.5) * MEDIAN_BIN).mean()


class NormalsTask(Task):
    """Loss 1 − cos(p̂, ĝ) averaged over the valid pixels of the batch (the study's loss)."""

    head_kind = "dense"
    primary_metric = "mean"
    higher_is_better = MappingProxyType({
        "mean": False, "median": False, "rmse": False,
        **{f"within_{threshold:g}": True for threshold in THRESHOLDS},
        "cos_sim": True,
    })
    delta_m_metrics = ("mean", "median", "within_11.25", "within_22.5", "within_30")

    def __init__(self, name: str, *, tanh: bool = False) -> None:
        super().__init__(name, 3)
        self.tanh = tanh

    def predict(self, output: Tensor) -> Tensor:
        """tanh(output) with the study's activation (it changes the direction, so it matters), else the output."""
        return output.tanh() if self.tanh else output

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        check_same_shape(pred, target, self.name)
        return masked_mean(1.0 - _cosine(pred, target), _valid(target))

    def output_prior(self, targets: Tensor) -> Tensor | None:
        """A bias whose prediction points along the mean valid normal (N x 3 x H x W targets), which
        minimises the mean 1 − cos; under tanh, atanh of half that unit vector points the same way."""
        valid = _valid(targets).unsqueeze(1)
        mean = torch.where(valid, targets, 0.0).sum(dim=(0, 2, 3))
        norm = torch.linalg.vector_norm(mean)
        if norm == 0:
            return None
        direction = mean / norm
        return torch.atanh(0.5 * direction) if self.tanh else direction

    def metric(self) -> NormalsMetric:
        return NormalsMetric()


def build(name: str, cfg: ExperimentConfig, positive_rates: Mapping[str, float]) -> NormalsTask:
    """The surface-normal task (``normals_activation``: the study's tanh or none)."""
    return NormalsTask(name, tanh=cfg.normals_activation == "tanh")
