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
from engine import distributed, loss_weighting
from engine.distributed import Context
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
    context: Context = distributed.SINGLE


def build_trial(
    cfg: ExperimentConfig, splits: data.Splits | None = None, *, index: int = 0,
    device: torch.device | None = None, train: bool = False, context: Context = distributed.SINGLE,
) -> Trial:
    """Assemble trial ``index`` of ``cfg`` (resolved: ``num_seg_classes`` set).

    With ``train`` the random state is seeded with ``cfg.seed + index`` before the model is
    initialised (the same on every rank), the heads start at their loss's best constant, and
    the loss weighting and the one optimizer are built. ``splits`` (when given) provide the
    loaders (this rank's share under torchrun) and the attribute tasks' positive rates.
    """
    device = distributed.device_of(context, resolve_device(cfg) if device is None else device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark  # torch's process-wide switch: fastest kernels per shape
    if train:
        seed_everything(cfg.seed + index)
    tasks = task_registry.build(cfg, positive_rates=None if splits is None else positive_rates(cfg, splits.train))
    model = models.build(cfg, {name: task.head_spec for name, task in tasks.items()})
    if cfg.sync_batchnorm:
        model = distributed.convert_sync_batchnorm(model, context, device)
    trial = Trial(cfg=cfg, index=index, device=device, tasks=tasks, model=model)
    if train:
        if splits is None:
            raise ValueError("a training trial needs its data splits")
        init_output_biases(model, tasks, splits.train)
        trial.weighting = loss_weighting.build(cfg.comb_loss, cfg.task_list, cfg.loss_weights).to(device)
    trial.model = model.to(device)
    if train:
        trial.optimizer = optim.build(cfg.optimizer_spec, trial.model, extra=list(trial.weighting.parameters()))
        if context.distributed:  # the model is the same everywhere; augmentation and dropout differ per rank
            seed_everything((cfg.seed + index) * 1_000_003 + context.rank)
    trial.context = context
    if splits is not None:
        trial.loaders = loaders(cfg, splits, index, context)
    return trial


def loaders(cfg: ExperimentConfig, splits: data.Splits, index: int, context: Context = distributed.SINGLE) -> dict[str, DataLoader]:
    """Train (shuffled with the trial's seed, last partial batch dropped), val and test loaders.

    Under torchrun the train loader draws this rank's share of each global batch
    (``DistributedSampler``, reseeded per epoch) and the evaluation loaders a shard of their
    split without padding, so the reduced metrics are those of the whole split.
    """
    drop_last = len(splits.train) > cfg.train_batch_size
    if not context.distributed:
        train = data.loader(splits.train, batch_size=cfg.train_batch_size, shuffle=True, num_workers=cfg.num_workers,
                            seed=cfg.seed + index, drop_last=drop_last, persistent_workers=cfg.persistent_workers)
    else:
        sampler = distributed.train_sampler(splits.train, context, seed=cfg.seed + index, drop_last=drop_last)
        train = data.loader(splits.train, batch_size=distributed.local_batch(cfg.train_batch_size, context, "train_batch_size"),
                            shuffle=False, num_workers=cfg.num_workers, seed=(cfg.seed + index) * 1_000_003 + context.rank,
                            drop_last=drop_last, sampler=sampler, persistent_workers=cfg.persistent_workers)
    evaluation = {}
    for split, batch in (("val", cfg.val_batch_size), ("test", cfg.test_batch_size)):
        dataset = getattr(splits, split)
        sampler = distributed.ShardSampler(len(dataset), context) if context.distributed else None
        evaluation[split] = data.loader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.num_workers, seed=0,
                                        sampler=sampler)
    return {"train": train, **evaluation}


def positive_rates(cfg: ExperimentConfig, train: Dataset) -> dict[str, float] | None:
    """Share of positive training images per attribute task (for ``class_balance``), if the split knows it."""
    rate = getattr(train, "positive_rate", None)
    if rate is None:
        return None
    return {task: rate(task) for task in cfg.task_list if task.startswith("class_")}
