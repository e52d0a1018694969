"""Task heads on the shared features: DeepLab-v3 ASPP for dense maps, a small MLP for attributes.

Heads return raw outputs (logits, unnormalised normals): activations belong to the losses,
so ``BCEWithLogitsLoss`` never sees a sigmoid twice (REFERENCE §8).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from models.fast_ops import atrous_convs

#: The study's ASPP rates at output stride 8 (DeepLab-v3).
ASPP_RATES = (12, 24, 36)


class StudyASPP(ASPP):
    """torchvision's ASPP with the study's dropout: ``dropout`` after the 1x1 branch and the projection.

    torchvision drops 0.5 after the projection only; the study's ``ASPP.py`` used 0.3 in both
    places, which we keep so results stay comparable. The atrous convs are
    :class:`~models.fast_ops.AtrousConv2d` (same parameters and state keys, the same outputs),
    which skip the taps that read only padding when a rate reaches past the feature map.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int, *, dropout: float) -> None:
        super().__init__(in_channels, atrous_rates, out_channels)
        self.convs[0].append(nn.Dropout(dropout))
        self.project[-1] = nn.Dropout(dropout)
        atrous_convs(self)


class DenseHead(nn.Sequential):
    """DeepLab-v3 head: ASPP, 3x3 conv + BN + ReLU, 1x1 conv to the task's channels (at feature resolution)."""

    def __init__(self, in_channels: int, out_channels: int, *, head_channels: int = 256, dropout: float = 0.3) -> None:
        super().__init__(
            StudyASPP(in_channels, ASPP_RATES, head_channels, dropout=dropout),
            nn.Conv2d(head_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(),
            nn.Conv2d(head_channels, out_channels, 1),
        )


class TinyMapMaxPool(nn.MaxPool2d):
    """The study's 2x2 max-pool (floor mode, so odd maps lose their last row as in the study);
    a map smaller than the window passes unchanged instead of failing (tiny test inputs)."""

    def forward(self, x: Tensor) -> Tensor:
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


class ClassificationHead(nn.Module):
    """The study's attribute head: 3x3 conv (64) + ReLU, 2x2 max-pool, global average pool, 64-32-out MLP.

    Dropout 0.6 before and 0.4 after the hidden layer. Returns logits of shape N (N x out for
    ``out_channels > 1``): the study's head ended in a sigmoid, whose input this logit is.
    """

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1),
            nn.ReLU(),
            TinyMapMaxPool(2, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.6),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Dropout(0.4),
            nn.Linear(32, out_channels),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.features(features)).squeeze(1)


def _dense_head(in_channels: int, out_channels: int, head_channels: int) -> nn.Module:
    return DenseHead(in_channels, out_channels, head_channels=head_channels)


def _classification_head(in_channels: int, out_channels: int, head_channels: int) -> nn.Module:
    """``head_channels`` sizes the dense heads only; this head keeps the study's 64 and 32."""
    return ClassificationHead(in_channels, out_channels)


#: ``Task.head_kind`` -> head constructor ``(in_channels, out_channels, head_channels)``.
HEADS: Mapping[str, Callable[[int, int, int], nn.Module]] = MappingProxyType({
    "dense": _dense_head,
    "classification": _classification_head,
})


def build_head(kind: str, in_channels: int, out_channels: int, *, head_channels: int = 256) -> nn.Module:
    """The head of ``kind`` for a task with ``out_channels`` outputs; an unknown kind lists the valid ones."""
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {list(HEADS)}")
    return HEADS[kind](in_channels, out_channels, head_channels)
