"""Binary face attributes (``class_<attribute>``, CelebA): one logit per image, target 0. or 1."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from tasks.base import Task
from utils.config import ExperimentConfig, celeba_attribute
from utils.errors import ConfigError, DataError

PREFIX = "class_"


def _f1(hits: Tensor, misses: Tensor) -> Tensor:
    """F1 = 2·tp / (2·tp + fp + fn), with ``misses`` = fp + fn; 0 when undefined (as scikit-learn)."""
    denominator = 2 * hits + misses
    return torch.where(denominator > 0, 2 * hits / denominator.clamp(min=1), 0.0)


class AttributeMetric(Metric):
    """``accuracy`` and ``f1_weighted`` at ``threshold`` on sigmoid(logit); threshold-free ``auroc``.

    ``f1_weighted`` is scikit-learn's ``f1_score(average="weighted")`` on the two classes: the
    F1 of each class weighted by its support. The counts are summed on the device; ``auroc``
    needs every score, so those are kept (as float64 probabilities, which saturate only
    beyond |logit| ≈ 36) and gathered across processes. ``auroc`` is NaN when a class is absent.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("stats", torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")  # tp, fp, fn, tn
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: N logits; ``target``: N values 0. or 1."""
        probability = pred.detach().double().sigmoid().flatten()
        positive = target.flatten() >= 0.5
        predicted = probability > self.threshold
        self.stats += torch.stack([
            (predicted & positive).sum(),
            (predicted & ~positive).sum(),
            (~predicted & positive).sum(),
            (~predicted & ~positive).sum(),
        ])
        self.scores.append(probability)
        self.labels.append(positive)

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn, tn = self.stats.double()
        total = tp + fp + fn + tn
        f1_weighted = (_f1(tp, fp + fn) * (tp + fn) + _f1(tn, fp + fn) * (tn + fp)) / total
        return {"accuracy": (tp + tn) / total, "f1_weighted": f1_weighted, "auroc": self._auroc()}

    def _auroc(self) -> Tensor:
        # A list of batches before a distributed sync, one gathered tensor after it.
        labels = dim_zero_cat(self.labels) if len(self.labels) > 0 else torch.zeros(0, dtype=torch.bool)
        positives = int(labels.sum())
        if positives == 0 or positives == labels.numel():
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.stats.device)
        return binary_auroc(dim_zero_cat(self.scores), labels.long()).double()


class AttributeTask(Task):
    """``BCEWithLogitsLoss`` on one logit, with ``pos_weight = (1 − p) / p`` under ``class_balance``.

    ``p`` is the positive rate of the training split. Without it (``positive_rate=None``) the
    task still describes its head, but a balanced loss refuses to run rather than silently
    falling back to the unweighted one.
    """

    head_kind = "classification"
    primary_metric = "f1_weighted"
    higher_is_better = MappingProxyType({"accuracy": True, "f1_weighted": True, "auroc": True})

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
