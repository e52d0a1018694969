"""A trial assembled in one place: tasks, model, loss weighting, optimizer and loaders.

Training, evaluation and plotting all call :func:`build_trial`, so the model a folder is
tested with is built exactly as it was trained. Data flows one way: the config (with the
class count resolved from the data) → tasks → head specs → model → optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

import data
import models
import optim
import tasks as task_registry
from engine import loss_weighting
from engine.priors import init_output_biases
from engine.runtime import resolve_device, seed_everything
from models.multitask import MultiTaskModel
from tasks.base import Task
from utils.config import ExperimentConfig


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill what the data decides (the number of segmentation classes), once, so trial folders rebuild alone."""
    if cfg.num_seg_classes is not None:
        return cfg
    return cfg.model_copy(update={"num_seg_classes": data.describe(cfg).num_seg_classes})


@dataclass
class Trial:
    """Everything one trial trains or evaluates with; ``weighting`` and ``optimizer`` only for training."""

    cfg: ExperimentConfig
    index: int
    device: torch.device
    tasks: dict[str, Task]
    model: MultiTaskModel
    weighting: loss_weighting.LossWeighting | None = None
    optimizer: torch.optim.Optimizer | None = None
    loaders: dict[str, DataLoader] = field(default_factory=dict)


def build_trial(
    cfg: ExperimentConfig, splits: data.Splits | None = None, *, index: int = 0,
    device: torch.device | None = None, train: bool = False,
) -> Trial:
    """Assemble trial ``index`` of ``cfg`` (resolved: ``num_seg_classes`` set).

    With ``train`` the random state is seeded with ``cfg.seed + index`` before the model is
    initialised, the heads start at their loss's best constant, and the loss weighting and the
    one optimizer are built. ``splits`` (when given) provide the loaders and the attribute
    tasks' positive rates.
    """
    device = resolve_device(cfg) if device is None else device
    if train:
        seed_everything(cfg.seed + index)
    tasks = task_registry.build(cfg, positive_rates=None if splits is None else positive_rates(cfg, splits.train))
    model = models.build(cfg, {name: task.head_spec for name, task in tasks.items()})
    trial = Trial(cfg=cfg, index=index, device=device, tasks=tasks, model=model)
    if train:
        if splits is None:
            raise ValueError("a training trial needs its data splits")
        init_output_biases(model, tasks, splits.train)
        trial.weighting = loss_weighting.build(cfg.comb_loss, cfg.task_list, cfg.loss_weights).to(device)
    trial.model = model.to(device)
    if train:
        trial.optimizer = optim.build(cfg.optimizer_spec, trial.model, extra=list(trial.weighting.parameters()))
    if splits is not None:
        trial.loaders = loaders(cfg, splits, index)
    return trial


def loaders(cfg: ExperimentConfig, splits: data.Splits, index: int) -> dict[str, DataLoader]:
    """Train (shuffled with the trial's seed, last partial batch dropped), val and test loaders."""
    return {
        "train": data.loader(splits.train, batch_size=cfg.train_batch_size, shuffle=True, num_workers=cfg.num_workers,
                             seed=cfg.seed + index, drop_last=len(splits.train) > cfg.train_batch_size),
        "val": data.loader(splits.val, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.num_workers, seed=0),
        "test": data.loader(splits.test, batch_size=cfg.test_batch_size, shuffle=False, num_workers=cfg.num_workers, seed=0),
    }


def positive_rates(cfg: ExperimentConfig, train: Dataset) -> dict[str, float] | None:
    """Share of positive training images per attribute task (for ``class_balance``), if the split knows it."""
    rate = getattr(train, "positive_rate", None)
    if rate is None:
        return None
    return {task: rate(task) for task in cfg.task_list if task.startswith("class_")}
