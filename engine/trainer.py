"""The epoch loop of one trial: train, validate, LR plateau, early stopping, checkpoints, history.

Host syncs are kept off the hot path: losses accumulate on the device and are read once per
epoch (plus one read every ``log_every`` steps for the progress bar); metrics are torchmetrics
states read once per validation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import optim
from engine.early_stopping import EarlyStopping
from engine.evaluate import evaluate_loader
from engine.layout import GLOBAL_CHECKPOINT, HISTORY_FILES, LAST_CHECKPOINT, task_checkpoint
from engine.loss_weighting import LossWeighting
from engine.runtime import autocast, read_scalars, to_device
from optim import sparsity
from tasks.base import Task
from utils import checkpoint as ckpt
from utils.config import ExperimentConfig
from utils.logging import RunLogger
from utils.visualize import prediction_panel

log = logging.getLogger("gsmtl")

#: Epochs between prediction images in wandb (``wandb_img_log``).
IMAGE_LOG_EVERY = 10


@dataclass
class History:
    """Per-epoch values, written as the study's ``training_dict.json`` / ``validation_dict.json``."""

    train: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "lr": [], "sparsity": {}, "lambda": [], "time": []})
    val: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "metric": {}, "time": []})

    def add_train(self, losses: Mapping[str, float], lr: float, lam: float, spars: Mapping[str, float], seconds: float) -> None:
        _append(self.train["loss"], losses)
        _append(self.train["sparsity"], spars)
        self.train["lr"].append(lr)
        self.train["lambda"].append(lam)
        self.train["time"].append(seconds)

    def add_val(self, losses: Mapping[str, float], metrics: Mapping[str, Mapping[str, float]], seconds: float) -> None:
        _append(self.val["loss"], losses)
        for task, values in metrics.items():
            _append(self.val["metric"].setdefault(task, {}), values)
        self.val["time"].append(seconds)

    def write(self, folder: Path) -> None:
        train_file, val_file = HISTORY_FILES
        ckpt.write_json(folder / train_file, self.train)
        ckpt.write_json(folder / val_file, self.val)


def _append(store: dict[str, list[float]], values: Mapping[str, float]) -> None:
    for key, value in values.items():
        store.setdefault(key, []).append(value)


class Trainer:
    """Train one trial of an experiment and keep its best checkpoints in ``folder``."""

    def __init__(
        self, cfg: ExperimentConfig, *, model: nn.Module, tasks: Mapping[str, Task], weighting: LossWeighting,
        optimizer: torch.optim.Optimizer, loaders: Mapping[str, DataLoader], device: torch.device,
        folder: Path, logger: RunLogger,
    ) -> None:
        self.cfg, self.model, self.tasks, self.weighting = cfg, model, dict(tasks), weighting
        self.optimizer, self.loaders, self.device, self.folder, self.logger = optimizer, loaders, device, folder, logger
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=5, min_lr=1e-7)
        self.stopper = EarlyStopping(cfg.earlystop_patience)
        self.task_stoppers = {name: EarlyStopping(cfg.task_earlystop_patience) for name in tasks} if cfg.is_multitask else {}
        self.history = History()
        self.start_epoch = 0

    # ----------------------------------------------------------------- state
    @property
    def active_tasks(self) -> list[str]:
        return [name for name in self.tasks if not (name in self.task_stoppers and self.task_stoppers[name].stopped)]

    @property
    def finished(self) -> bool:
        """Global early stop, or every task stopped (also true right after resuming such a run)."""
        return self.stopper.stopped or (bool(self.task_stoppers) and not self.active_tasks)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue this trial exactly after ``epoch``."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stopper": self.stopper.state_dict(),
            "task_stoppers": {name: s.state_dict() for name, s in self.task_stoppers.items()},
            "history": {"train": self.history.train, "val": self.history.val},
            "rng": _rng_state(self.loaders["train"]),
            "wandb_id": self.logger.run_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["stopper"])
        for name, stopper_state in state["task_stoppers"].items():
            self.task_stoppers[name].load_state_dict(stopper_state)
        self.history = History(train=state["history"]["train"], val=state["history"]["val"])
        _set_rng_state(state["rng"], self.loaders["train"])
        for name in self.tasks:
            if name not in self.active_tasks:
                self.model.heads[name].requires_grad_(False)
        self.start_epoch = state["epoch"] + 1

    # ----------------------------------------------------------------- loop
    def fit(self) -> None:
        """Run epochs until every task stopped, the global early stop, or ``epochs``."""
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.finished:
                break
            lam = self._schedule_sparsity(epoch)
            started = time.perf_counter()
            train_losses = self.train_one_epoch(epoch)
            train_seconds = time.perf_counter() - started
            spars = self._sparsity()
            self.history.add_train(train_losses, self.optimizer.param_groups[0]["lr"], lam, spars, train_seconds)

            started = time.perf_counter()
            val_losses, val_metrics = evaluate_loader(
                self.model, self.tasks, self.loaders["val"], self.device,
                amp=self.cfg.amp, channels_last=self.cfg.channels_last, desc=f"val {epoch}",
            )
            val_total = self._early_stopping(epoch, val_losses)
            val_losses["total"] = val_total
            self.history.add_val(val_losses, val_metrics, time.perf_counter() - started)
            self.scheduler.step(val_total)

            self.history.write(self.folder)
            ckpt.save(self.state_dict(epoch), self.folder / LAST_CHECKPOINT)
            self.logger.log(
                {"train": {"loss": train_losses, "lr": self.optimizer.param_groups[0]["lr"], "lambda": lam},
                 "val": {"loss": val_losses, "metric": val_metrics}, "sparsity": spars},
                step=epoch,
            )
            if self.cfg.wandb_img_log and self.logger.run_id is not None and epoch % IMAGE_LOG_EVERY == 0:
                self._log_predictions(epoch)
            log.info(self._summary_line(epoch, train_losses, val_losses, val_metrics, spars))
            if self.finished:
                log.info("early stop at epoch %d (best total %.4f at epoch %d)", epoch, self.stopper.best, self.stopper.best_epoch)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training split; returns mean losses per task and in total."""
        self.model.train()
        active = self.active_tasks
        sums = {name: torch.zeros((), device=self.device) for name in [*active, "total"]}
        count, limit = 0, self.cfg.max_batches_per_epoch
        loader = self.loaders["train"]
        total_steps = len(loader) if limit is None else min(limit, len(loader))
        bar = tqdm(_take(loader, limit), total=total_steps, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            images, targets = to_device(batch, self.device, self.cfg.channels_last)
            with autocast(self.device, self.cfg.amp):
                outputs = self.model(images, tasks=active)
            losses = {name: self.tasks[name].loss(outputs[name].float(), targets[name]) for name in active}
            total = self.weighting(losses, active)
            if self.cfg.penalty_in_loss and self.cfg.group_sparsity:
                total = total + optim.penalty_tensor(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()

            batch_size = images.shape[0]
            for name, loss in losses.items():
                sums[name] += loss.detach() * batch_size
            sums["total"] += total.detach() * batch_size
            count += batch_size
            if (step + 1) % self.cfg.log_every == 0:
                bar.set_postfix(loss=f"{(sums['total'] / count).item():.4f}")
        return read_scalars({name: value / max(count, 1) for name, value in sums.items()})

    # ----------------------------------------------------------------- pieces
    @torch.no_grad()
    def _log_predictions(self, epoch: int, count: int = 4) -> None:
        """A few validation inputs with each task's ground truth and prediction, as one wandb image."""
        self.model.eval()
        images, targets = to_device(next(iter(self.loaders["val"])), self.device, self.cfg.channels_last)
        images, targets = images[:count], {name: target[:count] for name, target in targets.items()}
        with autocast(self.device, self.cfg.amp):
            outputs = self.model(images, tasks=list(self.tasks))
        panel = prediction_panel(images, targets, outputs, list(self.tasks), max_items=count)
        self.logger.log_array("val/predictions", panel, step=epoch, caption=f"epoch {epoch}")

    def _schedule_sparsity(self, epoch: int) -> float:
        """λ for this epoch (``lambda_list`` while it lasts) and the prox switch (``sparsity_threshold``)."""
        lam = self.cfg.bb_optimizer_params.lambda_
        schedule = self.cfg.lambda_list
        if schedule and epoch // 10 < len(schedule):
            lam = schedule[epoch // 10]
        if not self.cfg.group_sparsity:
            return 0.0
        optim.set_lambda(self.optimizer, lam)
        optim.set_prox(self.optimizer, epoch >= self.cfg.sparsity_threshold)
        return lam

    def _sparsity(self) -> dict[str, float]:
        summary = sparsity.summary(self.model.backbone)
        if self.cfg.group_sparsity:
            with torch.no_grad():
                summary["penalty"] = float(optim.penalty_tensor(self.optimizer))
        return summary

    def _early_stopping(self, epoch: int, val_losses: dict[str, float]) -> float:
        """Update per-task and global early stopping; returns the validation total.

        The total is the plain sum of task losses, a stopped task counting with its best loss,
        so the learned uncertainty weights cannot move the stopping criterion.
        """
        for name in self.active_tasks if self.task_stoppers else []:
            stopper = self.task_stoppers[name]
            if stopper.step(val_losses[name], epoch):
                ckpt.save(self._best_state(epoch, val_losses[name]), self.folder / task_checkpoint(name))
            if stopper.stopped:
                log.info("task %s stopped at epoch %d (best %.4f at epoch %d); its head is frozen",
                         name, epoch, stopper.best, stopper.best_epoch)
                self.model.heads[name].requires_grad_(False)
        total = sum(
            self.task_stoppers[name].best if name in self.task_stoppers and self.task_stoppers[name].stopped
            else val_losses[name]
            for name in self.tasks
        )
        if self.stopper.step(total, epoch):
            ckpt.save(self._best_state(epoch, total), self.folder / GLOBAL_CHECKPOINT)
        return total

    def _best_state(self, epoch: int, loss: float) -> dict[str, Any]:
        return {"epoch": epoch, "val_loss": loss, "model": self.model.state_dict()}

    def _summary_line(
        self, epoch: int, train: Mapping[str, float], val: Mapping[str, float],
        metrics: Mapping[str, Mapping[str, float]], spars: Mapping[str, float],
    ) -> str:
        parts = [f"epoch {epoch:3d}", f"train {train['total']:.4f}", f"val {val['total']:.4f}"]
        for name, task in self.tasks.items():
            key = task.primary_metric
            parts.append(f"{name}:{key}={metrics[name][key]:.4f}")
        parts.append(f"group_spars={100 * spars['group_sparsity']:.1f}%")
        if "penalty" in spars:
            parts.append(f"penalty={spars['penalty']:.4g}")
        parts.append(f"lr={self.optimizer.param_groups[0]['lr']:.1e}")
        return "  ".join(parts)


def _take(loader: DataLoader, limit: int | None) -> Iterator[Any]:
    for step, batch in enumerate(loader):
        if limit is not None and step >= limit:
            return
        yield batch


def _rng_state(loader: DataLoader) -> dict[str, Any]:
    """Global generators plus the training loader's shuffle generator, for an exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader.generator is not None:
        state["loader"] = loader.generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], loader: DataLoader) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and loader.generator is not None:
        loader.generator.set_state(state["loader"])

