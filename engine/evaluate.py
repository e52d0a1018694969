"""Test a trial with its best checkpoints: each task with its own best weights in multitask."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.trainer import GLOBAL_CHECKPOINT, evaluate, task_checkpoint
from optim import sparsity
from tasks.base import Task
from utils import checkpoint as ckpt
from utils.config import ExperimentConfig
from utils.errors import DataError


def checkpoint_plan(cfg: ExperimentConfig, folder: Path) -> dict[str, list[str]]:
    """Which checkpoint file tests which tasks: a task's own best if it has one, else the global best."""
    if not (folder / GLOBAL_CHECKPOINT).is_file():
        raise DataError(f"trial folder '{folder}' has no {GLOBAL_CHECKPOINT}; was the trial trained?")
    plan: dict[str, list[str]] = {}
    for task in cfg.task_list:
        own = task_checkpoint(task)
        name = own if cfg.is_multitask and (folder / own).is_file() else GLOBAL_CHECKPOINT
        plan.setdefault(name, []).append(task)
    return plan


def test_trial(
    cfg: ExperimentConfig, model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader,
    folder: Path, device: torch.device,
) -> dict[str, Any]:
    """Metrics and losses per task on ``loader`` plus the sparsity of the global best model."""
    result: dict[str, Any] = {"tasks": {}, "loss": {}, "checkpoints": {}, "epochs": {}}
    plan = checkpoint_plan(cfg, folder)
    for name in sorted(plan, key=lambda n: n != GLOBAL_CHECKPOINT):
        state = ckpt.load(folder / name, map_location=device)
        model.load_state_dict(state["model"])
        if name == GLOBAL_CHECKPOINT:
            result["sparsity"] = sparsity.summary(model.backbone)
        subset = {task: tasks[task] for task in plan[name]}
        losses, metrics = evaluate(model, subset, loader, device, amp=cfg.amp, channels_last=cfg.channels_last, desc="test")
        for task in plan[name]:
            result["tasks"][task] = metrics[task]
            result["loss"][task] = losses[task]
            result["checkpoints"][task] = name
            result["epochs"][task] = state["epoch"]
    return result
