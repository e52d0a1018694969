"""What every task tells the rest of the project: its head, its loss, its metrics and their directions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

HeadKind = Literal["dense", "classification"]


class HeadSpec(NamedTuple):
    """What a task asks of its head: the head's kind and its number of output channels."""

    kind: HeadKind
    out_channels: int


class Task(ABC):
    """One prediction task: ``name`` (the study's), head spec, loss and a fresh metric per split.

    Subclasses set the class attributes: ``head_kind``, ``primary_metric`` (the key early
    stopping and summaries watch), ``higher_is_better`` (a direction for every key that
    :meth:`metric` computes) and ``delta_m_metrics``: the metrics Δm and "best" comparisons
    count, the field's protocol (LibMTL's on NYU), each quantity once. The study's figure
    variants (``mIoU_imagewise``, depth errors on per-image-max depth, which equal the plain
    ones when training on that depth) are reported beside them but never counted.
    """

    head_kind: ClassVar[HeadKind]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[Mapping[str, bool]]
    delta_m_metrics: ClassVar[tuple[str, ...]]

    def __init__(self, name: str, out_channels: int) -> None:
        self.name = name
        self.out_channels = out_channels

    @property
    def head_spec(self) -> HeadSpec:
        """The head ``models.build`` gives this task."""
        return HeadSpec(self.head_kind, self.out_channels)

    def predict(self, output: Tensor) -> Tensor:
        """The task's prediction from its head's raw output (an activation; the identity by default).

        Losses and metrics take predictions. Segmentation and attribute tasks predict logits,
        which their losses need; regression tasks apply the study's output activation if any.
        """
        return output

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of a batch of predictions (:meth:`predict`) at the target's resolution; invalid pixels are ignored."""

    @abstractmethod
    def metric(self) -> Metric:
        """A new metric whose ``compute()`` gives ``{key: 0-d tensor}`` over everything it was updated with."""

    def output_prior(self, targets: Tensor) -> Tensor | None:
        """Bias of the head's last layer that makes the untrained model predict the best constant
        (through :meth:`predict`).

        ``targets`` are stacked training targets. Regression heads start at 0 while depth is in
        metres, and Adam moves a bias by about ``lr`` per step, so without a prior the first
        thousands of steps only learn the data's scale. None keeps the layer's initialisation.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out_channels={self.out_channels})"


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` where ``valid``; 0 (still differentiable) when nothing is valid.

    ``torch.where`` rather than multiplication, so a NaN/inf at an invalid pixel cannot leak in;
    the count is clamped on the device, so there is no host sync.
    """
    total = torch.where(valid, values, values.new_zeros(())).sum()
    return total / valid.sum().clamp(min=1)


def check_same_shape(pred: Tensor, target: Tensor, task: str) -> None:
    """Refuse silent broadcasting (N x 1 x H x W against N x H x W would give N x N x H x W)."""
    if pred.shape != target.shape:
        raise ValueError(f"{task}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
