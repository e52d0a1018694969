"""Models: config -> :class:`MultiTaskModel` (a shared dilated ResNet and one head per task)."""

from __future__ import annotations

import torch
from torch import nn

import tasks
from models.backbones import BACKBONES, ResNetBackbone, build_backbone
from models.heads import HEADS, build_head
from models.multitask import MultiTaskModel
from utils.config import ExperimentConfig

__all__ = ["BACKBONES", "HEADS", "MultiTaskModel", "ResNetBackbone", "build", "build_backbone", "build_head"]


def build(cfg: ExperimentConfig) -> MultiTaskModel:
    """The model of ``cfg``: ``cfg.backbone`` and, per task of ``task_list``, the head its task asks for."""
    backbone = build_backbone(cfg.backbone, width=cfg.backbone_width, pretrained=cfg.pretrained)
    heads = nn.ModuleDict({
        name: build_head(task.head_kind, backbone.out_channels, task.out_channels, head_channels=cfg.head_channels)
        for name, task in tasks.build(cfg).items()
    })
    model = MultiTaskModel(backbone, heads)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
