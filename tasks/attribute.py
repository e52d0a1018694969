"""Binary face attributes (``class_<attribute>``, CelebA): one logit per image, target 0. or 1."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassF1Score

from data.celeba_format import celeba_attribute
from tasks.base import Task
from utils.config import ExperimentConfig
from utils.errors import ConfigError, DataError

PREFIX = "class_"


class AttributeMetric(Metric):
    """``accuracy`` and ``f1_weighted`` at ``threshold`` on sigmoid(logit), threshold-free ``auroc``.

    torchmetrics' ``BinaryAccuracy``, ``MulticlassF1Score(average="weighted")`` on the two
    classes (scikit-learn's weighted F1, the study's) and exact ``BinaryAUROC``, fed with
    probabilities (torchmetrics would otherwise decide per batch whether to apply a sigmoid).
    A positive prediction is p > threshold (the study wrote p >= threshold; they differ only on
    ties). ``auroc`` is NaN when the split lacks a class, where it is undefined.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.accuracy = BinaryAccuracy(threshold=threshold)
        self.f1 = MulticlassF1Score(num_classes=2, average="weighted")
        self.auroc = BinaryAUROC()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: N logits; ``target``: N values 0. or 1."""
        probability = pred.detach().float().sigmoid().flatten()
        labels = (target.flatten() >= 0.5).long()
        self.accuracy.update(probability, labels)
        self.f1.update((probability > self.threshold).long(), labels)
        self.auroc.update(probability, labels)

    def compute(self) -> dict[str, Tensor]:
        accuracy = self.accuracy.compute().double()
        positives, negatives = self.accuracy.tp + self.accuracy.fn, self.accuracy.tn + self.accuracy.fp
        defined = (positives > 0) & (negatives > 0)
        auroc = self.auroc.compute().double() if bool(defined) else torch.tensor(float("nan"), dtype=torch.float64, device=accuracy.device)
        return {"accuracy": accuracy, "f1_weighted": self.f1.compute().double(), "auroc": auroc}

    def reset(self) -> None:
        super().reset()
        for child in self._children():
            child.reset()

    def merge_state(self, incoming: AttributeMetric) -> None:  # type: ignore[override]
        """Merge another instance's counts and scores (what a distributed sync does), child by child."""
        for mine, theirs in zip(self._children(), incoming._children()):
            mine.merge_state(theirs)

    def _children(self) -> tuple[Metric, Metric, Metric]:
        return self.accuracy, self.f1, self.auroc


class AttributeTask(Task):
    """``BCEWithLogitsLoss`` on one logit, with ``pos_weight = (1 − p) / p`` under ``class_balance``.

    ``p`` is the positive rate of the training split. Without it (``positive_rate=None``) the
    task still describes its head, but a balanced loss refuses to run rather than silently
    falling back to the unweighted one.
    """

    head_kind = "classification"
    primary_metric = "f1_weighted"
    higher_is_better = MappingProxyType({"accuracy": True, "f1_weighted": True, "auroc": True})
    delta_m_metrics = ("accuracy", "f1_weighted", "auroc")

    def __init__(
        self, name: str, *, threshold: float = 0.5, balance: bool = False, positive_rate: float | None = None,
    ) -> None:
        super().__init__(name, 1)
        self.threshold = threshold
        self.balance = balance
        self.pos_weight: float | None = None
        if balance and positive_rate is not None:
            if not 0.0 < positive_rate < 1.0:
                raise DataError(
                    f"class_balance: task {name!r} has positive rate {positive_rate} in the training split; "
                    "expected a value strictly between 0 and 1"
                )
            self.pos_weight = (1.0 - positive_rate) / positive_rate

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        pos_weight = None
        if self.balance:
            if self.pos_weight is None:
                raise ConfigError(
                    f"config key 'class_balance': no positive rate for task {self.name!r}; "
                    "build tasks with positive_rates from the training split"
                )
            pos_weight = pred.new_full((), self.pos_weight)
        return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), pos_weight=pos_weight)

    def output_prior(self, targets: Tensor) -> Tensor | None:
        """logit(p) of the training positive rate (a balanced loss is already centred at 0)."""
        if self.balance:
            return None
        rate = targets.float().mean().clamp(1e-3, 1 - 1e-3)
        return torch.logit(rate).reshape(1)

    def metric(self) -> AttributeMetric:
        return AttributeMetric(self.threshold)


def build(name: str, cfg: ExperimentConfig, positive_rates: Mapping[str, float]) -> AttributeTask:
    """The attribute task ``name`` (a study alias such as ``class_male`` or ``class_<CelebA attribute>``)."""
    if celeba_attribute(name) is None:
        raise ConfigError(f"task_list: {name!r} is not a CelebA attribute task (class_<attribute>)")
    return AttributeTask(
        name, threshold=cfg.class_threshold, balance=cfg.class_balance, positive_rate=positive_rates.get(name),
    )
