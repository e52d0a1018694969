"""The epoch loop of one trial: train, validate, LR plateau, early stopping, checkpoints, history.

The policies that change training over time are objects with hooks, tested alone: the
group-sparsity schedule (:mod:`engine.sparsity_schedule`) and early stopping
(:mod:`engine.early_stopping`). The loops themselves are :mod:`engine.loop`'s functions.
``last.pt`` (format: :mod:`engine.artifacts`) is written after every epoch, and also after the
current step when a stop is requested (SIGTERM, Ctrl-C), so a resume continues exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from engine import artifacts, distributed
from engine.early_stopping import TaskStopping
from engine.loop import PartialEpoch, StepOptions, evaluate, train_one_epoch
from engine.runtime import autocast, to_device
from engine.sparsity_schedule import SparsitySchedule
from engine.trial import Trial
from utils import checkpoint as ckpt
from utils import io
from utils.logging import RunLogger
from utils.visualize import prediction_panel

log = logging.getLogger("gsmtl")

#: Epochs between prediction images in wandb (``wandb_img_log``).
IMAGE_LOG_EVERY = 10


class Interrupted(Exception):
    """Training stopped on request (a signal) after saving ``last.pt``; ``resume`` tells how to go on."""

    def __init__(self, message: str, *, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


@dataclass
class History:
    """Per-epoch values, written as the study's ``training_dict.json`` / ``validation_dict.json``."""

    train: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "lr": {}, "sparsity": {}, "lambda": [], "time": []})
    val: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "metric": {}, "time": []})

    def add_train(self, losses: Mapping[str, float], lrs: Mapping[str, float], lam: float,
                  spars: Mapping[str, float], seconds: float, *, target: float | None = None) -> None:
        if target is not None:
            self.train.setdefault("target_group_sparsity", []).append(target)
        _append(self.train["loss"], losses)
        _append(self.train["lr"], lrs)
        _append(self.train["sparsity"], spars)
        self.train["lambda"].append(lam)
        self.train["time"].append(seconds)

    def add_val(self, losses: Mapping[str, float], metrics: Mapping[str, Mapping[str, float]], seconds: float) -> None:
        _append(self.val["loss"], losses)
        for task, values in metrics.items():
            _append(self.val["metric"].setdefault(task, {}), values)
        self.val["time"].append(seconds)

    def write(self, folder: Path) -> None:
        train_file, val_file = artifacts.HISTORY_FILES
        io.write_json(folder / train_file, self.train)
        io.write_json(folder / val_file, self.val)


def _append(store: dict[str, list[float]], values: Mapping[str, float]) -> None:
    for key, value in values.items():
        store.setdefault(key, []).append(value)


class Trainer:
    """Train one trial and keep its best checkpoints in ``folder``.

    ``stop_requested`` is polled after every optimizer step (a plain Python flag, no sync);
    when it returns a signal name, the trainer saves ``last.pt`` mid-epoch and raises
    :class:`Interrupted`.
    """

    def __init__(
        self, trial: Trial, *, folder: Path, logger: RunLogger,
        stop_requested: Callable[[], str | None] = lambda: None,
    ) -> None:
        if trial.optimizer is None or trial.weighting is None:
            raise ValueError("the trainer needs a trial built with train=True")
        cfg = trial.cfg
        self.trial, self.cfg, self.folder, self.logger = trial, cfg, folder, logger
        self.model, self.tasks, self.optimizer = trial.model, trial.tasks, trial.optimizer
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=0.1, patience=5, min_lr=1e-7)
        self.schedule = SparsitySchedule(cfg, self.optimizer, self.model.backbone)
        self.stopping = TaskStopping(list(self.tasks), patience=cfg.earlystop_patience,
                                     task_patience=cfg.task_earlystop_patience, per_task=cfg.is_multitask)
        self.history = History()
        self.start_epoch = 0
        self.partial: PartialEpoch | None = None
        self.stop_requested = stop_requested
        self.options = StepOptions(amp=cfg.amp, channels_last=cfg.channels_last,
                                   max_batches=cfg.max_batches_per_epoch, log_every=cfg.log_every)
        self.context = trial.context
        self.forward_model = self._forward_model()

    def _forward_model(self) -> torch.nn.Module:
        """What training runs forward passes through: DDP under torchrun, compiled with ``compile`` (the prox stays eager)."""
        forward = distributed.wrap(self.model, self.context, self.trial.device)
        return torch.compile(forward) if self.cfg.compile else forward

    @property
    def finished(self) -> bool:
        """Early stopping ended the phase; in target-sparsity mode not before the target's pattern is frozen."""
        return self.stopping.finished and not self.schedule.seeking_target

    # ----------------------------------------------------------------- state
    def state_dict(self, epoch: int, partial: PartialEpoch | None = None) -> dict[str, Any]:
        """Everything needed to continue this trial exactly after ``epoch`` (and ``partial``'s steps of the next)."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "weighting": self.trial.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stopping": self.stopping.state_dict(),
            "sparsity": self.schedule.state_dict(),
            "history": {"train": self.history.train, "val": self.history.val},
            "rng": self._rng_states(partial),
            "wandb_id": self.logger.run_id,
        }

    def _rng_states(self, partial: PartialEpoch | None) -> dict[str, Any] | list[dict[str, Any]]:
        """This process's generators (and where it stopped mid-epoch); every rank's, in rank order, under torchrun."""
        state = _rng_state(self.trial.loaders["train"]) | ({"partial": partial.state_dict()} if partial else {})
        return distributed.gather(state, self.context) if self.context.distributed else state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.trial.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopping.load_state_dict(state["stopping"])
        self.schedule.load_state_dict(state["sparsity"])
        self.history = History(train=state["history"]["train"], val=state["history"]["val"])
        rng = dict(state["rng"][self.context.rank] if isinstance(state["rng"], list) else state["rng"])
        partial = rng.pop("partial", None)
        _set_rng_state(rng, self.trial.loaders["train"])
        if self.stopping.freeze_stopped(self.model.heads):
            self.forward_model = self._forward_model()
        self.start_epoch = state["epoch"] + 1
        self.partial = None if partial is None else PartialEpoch.from_state(partial)

    # ----------------------------------------------------------------- loop
    def fit(self) -> None:
        """Run epochs until every task stopped, the global early stop, or ``epochs``; then ``finetune_epochs``.

        The fine-tuning phase starts with fresh early stopping (its best epochs become the best
        checkpoints) and every head training again, the zero groups held at zero.
        """
        total = self.cfg.epochs + self.cfg.finetune_epochs
        epoch = self.start_epoch
        while epoch < total:
            if self.finished:
                if not self.cfg.finetune_epochs or epoch >= self.cfg.epochs:
                    break
                epoch = self.cfg.epochs  # the main phase stopped early: fine-tune from here
            if epoch == self.cfg.epochs and self.cfg.finetune_epochs:
                self._begin_finetuning()
            self._run_epoch(epoch)
            signal = self.stop_requested()
            if self.context.distributed:
                signal = (signal or "SIGTERM") if distributed.agree([signal is not None], self.context)[0] else None
            if signal is not None and epoch + 1 < total and not self.finished:
                raise Interrupted(f"trial {self.trial.index} interrupted by {signal} after epoch {epoch}; "
                                  f"'{self.folder / artifacts.LAST_CHECKPOINT}' holds its state", signal_name=signal)
            epoch += 1

    def _begin_finetuning(self) -> None:
        if self.stopping.total.best_epoch >= self.cfg.epochs:
            return  # resumed inside the fine-tuning phase: its stopping state is the one loaded
        self._restart_stopping()
        log.info("fine-tuning for %d epoch(s) with the zero groups held at zero (%.1f %% group sparsity)",
                 self.cfg.finetune_epochs, 100 * self.schedule.measures(self.model.backbone)["group_sparsity"])

    def _restart_stopping(self) -> None:
        """Fresh early stopping, every head training: the best checkpoints from here on are of the new phase."""
        self.stopping = TaskStopping(list(self.tasks), patience=self.cfg.earlystop_patience,
                                     task_patience=self.cfg.task_earlystop_patience, per_task=self.cfg.is_multitask)
        self.model.heads.requires_grad_(True)
        self.forward_model = self._forward_model()

    def _run_epoch(self, epoch: int) -> None:
        """Train, validate, step the policies, save and log one epoch."""
        lam = self.schedule.on_epoch_start(epoch)
        sampler = self.trial.loaders["train"].sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        partial, self.partial = self.partial, None
        result = train_one_epoch(
            self.forward_model, self.tasks, self.stopping.active, combine=self.trial.weighting, optimizer=self.optimizer,
            loader=self.trial.loaders["train"], device=self.trial.device, options=self.options,
            extra_loss=self.schedule.loss_term if self.schedule.in_loss else None,
            desc=f"epoch {epoch}", where=f"trial {self.trial.index}, epoch {epoch}", resume=partial,
            stop=self.stop_requested, context=self.context, shared=list(self.trial.weighting.parameters()),
            after_step=self.schedule.after_step,
        )
        if isinstance(result, PartialEpoch):
            self._save_interrupted(epoch, result)
        distributed.share_buffers(self.model, self.context)
        train_seconds = time.perf_counter() - started + (partial.seconds if partial else 0.0)
        if self.schedule.on_epoch_end(epoch):  # the target's pattern was just frozen: its epochs are a new phase
            self._restart_stopping()
            log.info("target sparsity %.0f %% reached: λ and the zero groups are frozen from here on", 100 * self.schedule.target)
        spars = self.schedule.measures(self.model.backbone)
        lam = self.schedule.lam  # the controller may have moved it during the epoch
        lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(self.optimizer.param_groups)}
        self.history.add_train(result, lrs, lam, spars, train_seconds, target=self.schedule.target)

        started = time.perf_counter()
        val_losses, val_metrics = evaluate(self.model, self.tasks, self.trial.loaders["val"], self.trial.device,
                                           amp=self.cfg.amp, channels_last=self.cfg.channels_last, desc=f"val {epoch}",
                                           context=self.context)
        val_total = self.stopping.step(epoch, val_losses, self._save_best)
        frozen = self.stopping.freeze_stopped(self.model.heads)
        for name in frozen:
            stopper = self.stopping.per_task[name]
            log.info("task %s stopped at epoch %d (best %.4f at epoch %d); its head is frozen",
                     name, epoch, stopper.best, stopper.best_epoch)
        if frozen:  # DDP must not wait for the frozen heads' gradients
            self.forward_model = self._forward_model()
        val_losses["total"] = val_total
        self.history.add_val(val_losses, val_metrics, time.perf_counter() - started)
        if self.cfg.lr_schedule == "plateau":
            self.scheduler.step(val_total)

        state = self.state_dict(epoch)  # every rank takes part (its generators are gathered)
        if self.context.is_main:
            self.history.write(self.folder)
            artifacts.save_last(self.folder, state)
        sparsity_log = {**spars, **({"target": self.schedule.target} if self.schedule.target is not None else {})}
        self.logger.log({"train": {"loss": result, "lr": lrs, "lambda": lam},
                         "val": {"loss": val_losses, "metric": val_metrics}, "sparsity": sparsity_log}, step=epoch)
        if self.cfg.wandb_img_log and self.logger.run_id is not None and epoch % IMAGE_LOG_EVERY == 0:
            self._log_predictions(epoch)
        log.info(self._summary_line(epoch, result, val_losses, val_metrics, spars, lrs))
        if self.finished:
            best = self.stopping.total
            log.info("early stop at epoch %d (best total %.4f at epoch %d)", epoch, best.best, best.best_epoch)

    # ----------------------------------------------------------------- pieces
    def _save_interrupted(self, epoch: int, partial: PartialEpoch) -> None:
        """Save the state after the last finished step of ``epoch``, then stop."""
        state = self.state_dict(epoch - 1, partial)
        if self.context.is_main:
            artifacts.save_last(self.folder, state)
        raise Interrupted(
            f"trial {self.trial.index} interrupted by {partial.signal} at epoch {epoch}, step {partial.steps}; "
            f"'{self.folder / artifacts.LAST_CHECKPOINT}' holds its state",
            signal_name=partial.signal or "a stop request",
        )

    def _save_best(self, name: str, epoch: int, loss: float) -> None:
        if not self.context.is_main:
            return
        target = artifacts.GLOBAL_CHECKPOINT if name == TaskStopping.TOTAL else artifacts.task_checkpoint(name)
        ckpt.save({"epoch": epoch, "val_loss": loss, "model": self.model.state_dict()}, self.folder / target)

    @torch.no_grad()
    def _log_predictions(self, epoch: int, count: int = 4) -> None:
        """A few validation inputs with each task's ground truth and prediction, as one wandb image."""
        self.model.eval()
        images, targets = to_device(next(iter(self.trial.loaders["val"])), self.trial.device, self.cfg.channels_last)
        images, targets = images[:count], {name: target[:count] for name, target in targets.items()}
        with autocast(self.trial.device, self.cfg.amp):
            outputs = self.model(images, tasks=list(self.tasks))
        predictions = {name: self.tasks[name].predict(outputs[name].float()) for name in self.tasks}
        panel = prediction_panel(images, targets, predictions, list(self.tasks), max_items=count,
                                 image_normalization=self.cfg.image_normalization)
        self.logger.log_array("val/predictions", panel, step=epoch, caption=f"epoch {epoch}")

    def _summary_line(
        self, epoch: int, train: Mapping[str, float], val: Mapping[str, float],
        metrics: Mapping[str, Mapping[str, float]], spars: Mapping[str, float], lrs: Mapping[str, float],
    ) -> str:
        parts = [f"epoch {epoch:3d}", f"train {train['total']:.4f}", f"val {val['total']:.4f}"]
        for name, task in self.tasks.items():
            key = task.primary_metric
            parts.append(f"{name}:{key}={metrics[name][key]:.4f}")
        target = self.schedule.target
        parts.append(f"group_spars={100 * spars['group_sparsity']:.1f}%" + (f" (target {100 * target:.0f}%)" if target is not None else ""))
        if "penalty" in spars:
            parts.append(f"λ={self.schedule.lam:.3g} penalty={spars['penalty']:.4g}")
        if self.schedule.finetuning:
            parts.append("fine-tuning")
        parts.append("lr " + " ".join(f"{name}={lr:.1e}" for name, lr in lrs.items() if name != "loss_weights"))
        return "  ".join(parts)


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
