"""Models: config -> :class:`MultiTaskModel` (a shared dilated ResNet and one head per task)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.backbones import BACKBONES, ResNetBackbone, build_backbone
from models.heads import HEADS, build_head
from models.multitask import MultiTaskModel
from tasks.base import HeadSpec
from utils.config import ExperimentConfig

__all__ = ["BACKBONES", "HEADS", "MultiTaskModel", "ResNetBackbone", "build", "build_backbone", "build_head"]


def build(cfg: ExperimentConfig, heads: Mapping[str, HeadSpec]) -> MultiTaskModel:
    """The model of ``cfg``: ``cfg.backbone`` and one head per task, as each task's :class:`HeadSpec` asks."""
    backbone = build_backbone(cfg.backbone, width=cfg.backbone_width, pretrained=cfg.pretrained)
    heads = nn.ModuleDict({
        name: build_head(spec.kind, backbone.out_channels, spec.out_channels, head_channels=cfg.head_channels)
        for name, spec in heads.items()
    })
    model = MultiTaskModel(backbone, heads)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
