"""The trial loop: ``num_trials`` seeded trials of one experiment, then the result tables.

A trial that diverges (a non-finite loss or gradient) stops at once with one line, keeps its
last good checkpoints and is marked failed in ``<exp>_trials.csv``; with ``on_trial_failure:
continue`` (default) the next trial runs and the summary aggregates the finished ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import data
from engine import artifacts, distributed
from engine.distributed import Context
from engine.evaluate import compact_size, global_model, test_trial
from engine.runtime import resolve_device
from engine.trainer import Trainer
from engine.trial import Trial, build_trial, resolve
from optim import sparsity
from utils import config, io, report
from utils.config import ExperimentConfig
from utils.errors import DataError, NumericalFault
from utils.logging import RunLogger

log = logging.getLogger("gsmtl")

StopRequest = Callable[[], "str | None"]


def run(
    cfg: ExperimentConfig, *, trial: int | None = None, splits: data.Splits | None = None,
    stop: StopRequest = lambda: None, out_dir: str | Path = "out_csv", context: Context = distributed.SINGLE,
) -> list[dict[str, Any]]:
    """Train and test the experiment's trials (or one of them) and write ``out_csv/<exp>.csv``.

    ``splits`` lets callers that run several experiments on the same data (λ sweeps) decode it
    once. Under torchrun (``context``) every rank trains each trial and rank 0 alone writes.
    """
    if trial is not None:
        config.check_trial(cfg, trial)
    cfg = resolve(cfg)
    device = resolve_device(cfg)
    splits = data.build(cfg) if splits is None else splits
    if len(splits.train) < 2:
        raise DataError(f"{cfg.data_dir}: the training split holds {len(splits.train)} sample(s); "
                        "expected at least 2 (BatchNorm trains on batch statistics)")
    log.info("%s: %d train / %d val / %d test samples on %s", cfg.Experiment_name,
             len(splits.train), len(splits.val), len(splits.test), device)
    for index in range(cfg.num_trials) if trial is None else [trial]:
        try:
            run_trial(cfg, index, splits, device, stop=stop, context=context)
        except NumericalFault as fault:
            if context.is_main:
                artifacts.mark_failed(artifacts.trial_folder(cfg, index), str(fault))
            outcome = f"{cfg.Experiment_name}: {fault}; trial {index} marked failed, its last good checkpoints kept"
            if cfg.on_trial_failure == "stop":  # the command's one error line says it (exit code 1)
                if context.is_main:
                    write_report(cfg, out_dir=out_dir)
                raise NumericalFault(f"{outcome} (on_trial_failure: stop)") from None
            log.error("%s", outcome)
    return write_report(cfg, out_dir=out_dir) if context.is_main else []


def run_trial(
    cfg: ExperimentConfig, index: int, splits: data.Splits, device: torch.device, *, stop: StopRequest = lambda: None,
    context: Context = distributed.SINGLE,
) -> dict[str, Any]:
    """Train, test and save one trial; a finished trial of the same config is not trained again."""
    folder = artifacts.trial_folder(cfg, index)
    held = artifacts.holding(folder, cfg)
    finished, resume = distributed.broadcast((held.finished, cfg.checkpoint and held.resumable), context)
    if finished:
        log.info("trial %d already finished in %s; remove the folder to train it again", index, folder)
        return artifacts.read_result(folder)
    if context.is_main:
        if resume and held.failure is not None:
            log.warning("trial %d was marked failed (%s); it resumes from its last good %s, so unchanged data "
                        "and config most likely fail again at that step", index, held.failure, artifacts.LAST_CHECKPOINT)
        elif not resume:
            _warn_replaced(folder, cfg, index, held)
        artifacts.open_folder(folder, cfg, resume=resume)
    distributed.barrier(context)
    state = artifacts.load_last(folder, device) if resume else None
    trial = build_trial(cfg, splits, index=index, device=device, train=True, context=context)
    logger = RunLogger(
        name=folder.name, group=cfg.Experiment_name, config=config.to_dict(cfg), mode=cfg.wandb.mode,
        project=cfg.wandb.project, entity=cfg.wandb.entity, directory=cfg.wandb.dir,
        resume_id=None if state is None else state["wandb_id"], enabled=context.is_main,
    )
    try:
        trainer = Trainer(trial, folder=folder, logger=logger, stop_requested=stop)
        if state is not None:
            trainer.load_state_dict(state)
            log.info("trial %d resumes in epoch %d", index, state["epoch"] + 1)
        trainer.fit()
        distributed.barrier(context)  # rank 0 wrote the best checkpoints every rank now tests
        result = test_trial(trial, folder, {"test": trial.loaders["test"], "val": trial.loaders["val"]})
        if context.is_main:
            result["extra"] = compact_size(global_model(trial, folder), cfg.image_size, device)
            _write_layer_table(trial, folder)
            io.write_json(folder / artifacts.TEST_FILE, result)
            logger.summary({"test": result["tasks"], "sparsity": result.get("sparsity", {})})
        distributed.barrier(context)
    finally:
        logger.finish()
    log.info("trial %d: %s", index, _short(result))
    return result


def _warn_replaced(folder: Path, cfg: ExperimentConfig, index: int, held: artifacts.Holding) -> None:
    """Say so when training from scratch replaces a run the folder holds: one of another config (naming
    the keys that changed), or a stopped run's ``last.pt`` that ``checkpoint: false`` does not resume."""
    if not (held.results or held.last) or held.failure is not None:  # a diverged trial is trained again, as asked
        return
    changes = [] if held.stored is None else artifacts.changed_keys(held.stored, cfg)
    # Not resumed: checkpoint is false, or the config changed beyond epochs. The hint when only the first holds.
    hint = " (--set checkpoint=true resumes it)" if held.resumable else ""
    if held.stored is None or changes:
        what = "a config it cannot read" if held.stored is None else artifacts.describe_changes(changes)
        log.warning("trial folder %s holds a %s run of another config (%s); training trial %d from scratch replaces it%s",
                    folder, "finished" if held.results else "stopped", what, index, hint)
    else:
        log.warning("trial folder %s holds a stopped run's %s; with checkpoint: false trial %d trains from scratch%s",
                    folder, artifacts.LAST_CHECKPOINT, index, hint)


def _write_layer_table(trial: Trial, folder: Path) -> None:
    """Per-layer sparsity of the global best checkpoint (backbone and the heads' input layers), as
    ``sparsity_layers.csv``; the backbone's table goes to the console too."""
    model = global_model(trial, folder)
    layers = sparsity.task_layer_table(model)
    io.write_text(folder / artifacts.LAYER_TABLE, layers.to_csv(index=False))
    if trial.cfg.group_sparsity:
        shared = layers[layers["task"] == "shared"].drop(columns=["task"])
        log.info("trial %d, backbone sparsity per layer (%s):\n%s", trial.index, artifacts.GLOBAL_CHECKPOINT,
                 shared.to_string(index=False))


def write_report(cfg: ExperimentConfig, out_dir: str | Path = "out_csv") -> list[dict[str, Any]]:
    """Collect the experiment's finished (and failed) trials into the two CSV tables; returns the finished rows."""
    rows: list[dict[str, Any]] = []
    for index in range(cfg.num_trials):
        folder = artifacts.trial_folder(cfg, index)
        if (folder / artifacts.TEST_FILE).is_file():
            rows.append(report.trial_row(artifacts.read_result(folder), trial=index))
        elif (reason := artifacts.failure(folder)) is not None:
            rows.append({"trial": index, "status": "failed", "reason": reason})
    finished = [row for row in rows if row.get("status", "finished") == "finished"]
    if rows:
        summary, _ = report.write_tables(rows, out_dir=out_dir, name=cfg.Experiment_name)
        log.info("wrote %s (%d finished trial(s)%s)", summary, len(finished),
                 f", {len(rows) - len(finished)} failed" if len(rows) > len(finished) else "")
    return finished


def _short(result: dict[str, Any]) -> str:
    parts = [f"{task}: " + ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:3])
             for task, metrics in result["tasks"].items()]
    if "sparsity" in result:
        parts.append(f"group sparsity {100 * result['sparsity']['group_sparsity']:.1f}%")
    return " | ".join(parts)
