"""Shared backbones: the study's ResNet-D and torchvision's ResNets, all dilated to output stride 8.

Every backbone is a :class:`ResNetBackbone` (``stem`` then ``layer1`` … ``layer4``), so the
optimizer's groups, the sparsity measures and channel removal see one structure whatever the
family. Blocks are torchvision's ``BasicBlock`` / ``Bottleneck``; ``BasicBlock`` refuses
dilation, so :class:`DilatedBasicBlock` rebuilds its two 3x3 convolutions with it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.models import resnet as tv_resnet

from models.fast_ops import StemMaxPool2d, atrous_convs
from utils.errors import ConfigError

Block = type[tv_resnet.BasicBlock] | type[tv_resnet.Bottleneck]


class DilatedBasicBlock(tv_resnet.BasicBlock):
    """torchvision's ``BasicBlock`` with both 3x3 convolutions dilated (padding = dilation).

    torchvision raises for ``dilation > 1``; the block is otherwise unchanged, so its
    state_dict keys (and ImageNet weights) stay those of ``BasicBlock``.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, 1, norm_layer)
        if dilation > 1:
            self.conv1 = tv_resnet.conv3x3(inplanes, planes, stride, dilation=dilation)
            self.conv2 = tv_resnet.conv3x3(planes, planes, dilation=dilation)


class ResNetBackbone(nn.Module):
    """Stem and four residual stages; ``forward`` returns ``out_channels`` maps at 1/8 resolution."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], out_channels: int) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet backbone has 4 stages, got {len(layers)}")
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 once it reaches 8 (else to an int >= 1).

    Multiples of 8 keep tensor-core friendly shapes; at width 1 every count is unchanged.
    """
    value = channels * width
    if value >= 8:
        return round(value / 8) * 8
    return max(1, round(value))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _deep_stem(width: float) -> nn.Sequential:
    """ResNet-D stem: three 3x3 convs (stride 2, then 1, 1) and a stride-2 max-pool: 1/4 resolution."""
    mid, out = scaled_channels(64, width), scaled_channels(128, width)
    return nn.Sequential(
        *_conv_bn_relu(3, mid, stride=2),
        *_conv_bn_relu(mid, mid),
        *_conv_bn_relu(mid, out),
        StemMaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def _stage(block: Block, inplanes: int, planes: int, blocks: int, *, stride: int, dilation: int) -> nn.Sequential:
    """``blocks`` residual blocks, all at ``dilation``; a 1x1 conv + BN shortcut where the shape changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_channels:
        downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, out_channels, stride), nn.BatchNorm2d(out_channels))
    layers = [block(inplanes, planes, stride, downsample, dilation=dilation)]
    layers += [block(out_channels, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan-out) convs, BN scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet_d(block: Block, depths: Sequence[int], *, width: float = 1.0, pretrained: bool = False) -> ResNetBackbone:
    """The study's ResNet-D (REFERENCE §4): deep stem, layer3/4 dilated 2/4, output stride 8.

    ``width`` scales every channel count (stem and stage planes) so tests and demos run small.
    """
    if pretrained:
        raise ConfigError(
            "config key 'pretrained': no ImageNet weights exist for the ResNet-D backbones; "
            "expected false, or backbone resnet18/resnet34/resnet50/resnet101"
        )
    stem = _deep_stem(width)
    inplanes = scaled_channels(128, width)
    layers = []
    for planes, blocks, stride, dilation in zip((64, 128, 256, 512), depths, (1, 2, 1, 1), (1, 1, 2, 4)):
        planes = scaled_channels(planes, width)
        layers.append(_stage(block, inplanes, planes, blocks, stride=stride, dilation=dilation))
        inplanes = planes * block.expansion
    backbone = ResNetBackbone(stem, layers, inplanes)
    _init_weights(backbone)
    return atrous_convs(backbone)


def torchvision_resnet(
    block: Block, depths: Sequence[int], weights: WeightsEnum, *, width: float = 1.0, pretrained: bool = False,
) -> ResNetBackbone:
    """torchvision's ResNet with layer3/4 strides replaced by dilation 2/4, optionally ImageNet-initialised.

    Its widths are fixed (the ImageNet weights need them), so ``width`` must be 1.
    """
    if width != 1.0:
        raise ConfigError(
            f"config key 'backbone_width': torchvision ResNets have fixed channel counts; "
            f"expected 1.0 (or a resnetd* backbone to scale), got {width}"
        )
    state = _imagenet_state_dict(weights) if pretrained else None
    model = tv_resnet.ResNet(block, list(depths), replace_stride_with_dilation=[False, True, True])
    if state is not None:
        model.load_state_dict(state)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, StemMaxPool2d(kernel_size=3, stride=2, padding=1))  # torchvision's pool, faster
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    return atrous_convs(ResNetBackbone(stem, layers, 512 * block.expansion))


def weights_file(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (and looks for) the downloaded file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _imagenet_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """The cached ImageNet weights, downloaded when missing, hash-checked and loaded with ``weights_only=True``.

    torchvision names its files ``<arch>-<sha256 prefix>.pth``; the prefix is checked against
    the file's digest before the file is read, and the file holds a plain state_dict, so
    nothing in it is executed. Offline, a ConfigError says where to put the file.
    """
    path = weights_file(weights)
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    prefix = match.group(1) if match else None
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=prefix, progress=False)
        if prefix is not None and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(prefix):
            raise RuntimeError(f"its SHA-256 does not start with {prefix}: the file is damaged or not torchvision's")
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"config key 'pretrained': cannot load ImageNet weights '{path}' ({reason}); "
            f"download {weights.url} into {path.parent}/ or set pretrained: false"
        ) from None


#: Backbone name -> constructor taking ``width`` and ``pretrained`` keywords (RGB input).
BACKBONES: Mapping[str, Callable[..., ResNetBackbone]] = MappingProxyType({
    "resnetd18": partial(resnet_d, DilatedBasicBlock, (2, 2, 2, 2)),
    "resnetd34": partial(resnet_d, DilatedBasicBlock, (3, 4, 6, 3)),
    "resnetd50": partial(resnet_d, tv_resnet.Bottleneck, (3, 4, 6, 3)),
    "resnetd101": partial(resnet_d, tv_resnet.Bottleneck, (3, 4, 23, 3)),
    "resnet18": partial(torchvision_resnet, DilatedBasicBlock, (2, 2, 2, 2), tv_resnet.ResNet18_Weights.DEFAULT),
    "resnet34": partial(torchvision_resnet, DilatedBasicBlock, (3, 4, 6, 3), tv_resnet.ResNet34_Weights.DEFAULT),
    "resnet50": partial(torchvision_resnet, tv_resnet.Bottleneck, (3, 4, 6, 3), tv_resnet.ResNet50_Weights.DEFAULT),
    "resnet101": partial(torchvision_resnet, tv_resnet.Bottleneck, (3, 4, 23, 3), tv_resnet.ResNet101_Weights.DEFAULT),
})


def build_backbone(name: str, *, width: float = 1.0, pretrained: bool = False) -> ResNetBackbone:
    """The backbone registered as ``name``; an unknown name lists the valid ones."""
    if name not in BACKBONES:
        raise ConfigError(f"config key 'backbone': unknown backbone {name!r}; expected one of {list(BACKBONES)}")
    return BACKBONES[name](width=width, pretrained=pretrained)
