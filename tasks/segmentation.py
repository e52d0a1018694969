"""Semantic segmentation (``segmentsemantic``): per-pixel class logits, pixels labelled 255 ignored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType, ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tasks.base import Task, masked_mean
from utils.config import ExperimentConfig
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]


def _soft_cross_entropy() -> LossFn:
    """Cross-entropy with label smoothing 0.1, averaged over labelled pixels.

    The study's smp ``SoftCrossEntropyLoss`` divided by all pixels, ignored ones included.
    """

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        per_pixel = F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, label_smoothing=0.1, reduction="none")
        return masked_mean(per_pixel, target != IGNORE_INDEX)

    return loss


def _smp_losses() -> ModuleType:
    """segmentation_models_pytorch's losses, imported on use: smp (with timm) takes a second to load."""
    from segmentation_models_pytorch import losses

    return losses


def _dice() -> LossFn:
    """smp's multiclass Dice; it zeroes ignored pixels in both prediction and one-hot target."""
    return _smp_losses().DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)


def _tversky() -> LossFn:
    """smp's multiclass Tversky with the study's alpha 0.3, beta 0.7, gamma 2.5."""
    return _smp_losses().TverskyLoss(mode="multiclass", ignore_index=IGNORE_INDEX, alpha=0.3, beta=0.7, gamma=2.5)


def _focal() -> LossFn:
    """smp's multiclass focal loss (gamma 2.5, as the study), summed and divided by the labelled pixels.

    That equals the study's sum over classes of per-class means, but is 0 rather than NaN for
    a batch without labelled pixels. smp drops ignored pixels by boolean indexing.
    """
    focal = _smp_losses().FocalLoss(mode="multiclass", gamma=2.5, ignore_index=IGNORE_INDEX, reduction="sum")

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        return focal(pred, target) / (target != IGNORE_INDEX).sum().clamp(min=1)

    return loss


#: ``seg_loss_fn`` -> loss factory; names as in the study's configs.
SEG_LOSSES: Mapping[str, Callable[[], LossFn]] = MappingProxyType({
    "softCEloss": _soft_cross_entropy,
    "dice": _dice,
    "Tversky": _tversky,
    "Focal": _focal,
})


class SegmentationMetric(Metric):
    """Split-level confusion matrix -> ``mIoU``, ``pixel_acc``; plus the study's ``mIoU_imagewise``.

    ``mIoU`` averages IoU over the classes whose union is non-empty on the split. ``mIoU_imagewise``
    is smp's ``micro-imagewise`` IoU: per image, intersections and unions summed over classes
    (= correct / (2·labelled − correct)), then the mean over images; images without a labelled
    pixel are skipped (smp counted them as 0). Updates run on the device without host syncs.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("image_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: N x C x H x W logits; ``target``: N x H x W class ids (255 = ignore)."""
        classes = self.num_classes
        labels = pred.argmax(dim=1)
        valid = (target >= 0) & (target < classes)
        # scatter_add_ into an overflow bin for ignored pixels: a bincount without its host sync.
        index = torch.where(valid, target * classes + labels, classes * classes).flatten()
        counts = torch.zeros(classes * classes + 1, dtype=torch.long, device=index.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        self.confusion += counts[:-1].view(classes, classes)

        labelled = valid.flatten(1).sum(1)
        correct = ((labels == target) & valid).flatten(1).sum(1)
        iou = correct.double() / (2 * labelled - correct).clamp(min=1)
        self.image_iou_sum += iou.sum()
        self.num_images += (labelled > 0).sum()

    def compute(self) -> dict[str, Tensor]:
        confusion = self.confusion.double()
        intersection = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - intersection
        present = union > 0
        return {
            "mIoU": (intersection[present] / union[present]).mean(),
            "pixel_acc": intersection.sum() / confusion.sum(),
            "mIoU_imagewise": self.image_iou_sum / self.num_images,
        }


class SegmentationTask(Task):
    """``segmentsemantic``: ``num_classes`` logits per pixel, loss chosen by ``seg_loss_fn``."""

    head_kind = "dense"
    primary_metric = "mIoU"
    higher_is_better = MappingProxyType({"mIoU": True, "pixel_acc": True, "mIoU_imagewise": True})
    delta_m_metrics = ("mIoU", "pixel_acc")

    def __init__(self, name: str, num_classes: int, *, loss_name: str = "softCEloss") -> None:
        super().__init__(name, num_classes)
        if loss_name not in SEG_LOSSES:
            raise ConfigError(
                f"config key 'seg_loss_fn': unknown loss {loss_name!r}; expected one of {list(SEG_LOSSES)}"
            )
        self.num_classes = num_classes
        self.loss_name = loss_name
        self._loss = SEG_LOSSES[loss_name]()

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self._loss(pred, target)

    def metric(self) -> SegmentationMetric:
        return SegmentationMetric(self.num_classes)


def build(name: str, cfg: ExperimentConfig, positive_rates: Mapping[str, float]) -> SegmentationTask:
    """The segmentation task of ``cfg``; ``num_seg_classes`` is resolved from the data first (``engine.trial.resolve``)."""
    if cfg.num_seg_classes is None:
        raise ConfigError("config key 'num_seg_classes': not resolved; the engine sets it from the dataset before building tasks")
    return SegmentationTask(name, cfg.num_seg_classes, loss_name=cfg.seg_loss_fn)
