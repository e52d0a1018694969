"""The trial loop: ``num_trials`` seeded trials of one experiment, then the result tables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

import data
import models
import optim
import tasks as task_registry
from engine import loss_weighting
from engine.evaluate import positive_rates, test_trial
from engine.layout import (
    CONFIG_FILE,
    GLOBAL_CHECKPOINT,
    HISTORY_FILES,
    LAST_CHECKPOINT,
    LAYER_TABLE,
    TEST_FILE,
    task_checkpoint,
    trial_folder,
)
from engine.priors import init_output_biases
from engine.runtime import resolve_device, seed_everything
from engine.trainer import Trainer
from optim import sparsity
from utils import checkpoint as ckpt
from utils import report
from utils.config import ExperimentConfig, dump, parse_yaml
from utils.errors import ConfigError
from utils.logging import RunLogger

log = logging.getLogger("gsmtl")


#: Keys that change how a run is executed, not what it computes: a finished trial is reused and
#: an interrupted one resumed (``checkpoint: true``) across changes of these (and, to resume, of
#: ``epochs``, so a run can be extended).
RUN_CONTROL_KEYS = frozenset({"checkpoint", "wandb", "num_workers", "device", "log_every"})


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill what the data decides (number of segmentation classes) so trial folders rebuild alone."""
    if cfg.num_seg_classes is not None:
        return cfg
    return cfg.model_copy(update={"num_seg_classes": data.describe(cfg).num_seg_classes})


def run(cfg: ExperimentConfig, *, trial: int | None = None) -> list[dict[str, float]]:
    """Train and test the experiment's trials (or one of them) and write ``out_csv/<exp>.csv``."""
    if trial is not None and not 0 <= trial < cfg.num_trials:
        raise ConfigError(f"--trial {trial}: expected 0 <= trial < num_trials = {cfg.num_trials}")
    cfg = resolve(cfg)
    device = resolve_device(cfg)
    splits = data.build(cfg)
    log.info("%s: %d train / %d val / %d test samples on %s", cfg.Experiment_name,
             len(splits.train), len(splits.val), len(splits.test), device)
    for index in range(cfg.num_trials) if trial is None else [trial]:
        run_trial(cfg, index, splits, device)
    return write_report(cfg)


def run_trial(cfg: ExperimentConfig, index: int, splits: data.Splits, device: torch.device) -> dict[str, Any]:
    """Train, test and save one trial; a finished trial of the same config is not trained again."""
    folder = trial_folder(cfg, index)
    config_text = dump(cfg)
    if _stored_config_equals(folder, config_text, ignore=RUN_CONTROL_KEYS) and (folder / TEST_FILE).is_file():
        log.info("trial %d already finished in %s; remove the folder to train it again", index, folder)
        return ckpt.read_json(folder / TEST_FILE)
    resume = (cfg.checkpoint and (folder / LAST_CHECKPOINT).is_file()
              and _stored_config_equals(folder, config_text, ignore=RUN_CONTROL_KEYS | {"epochs"}))
    if cfg.checkpoint and not resume and (folder / LAST_CHECKPOINT).is_file():
        log.warning("trial folder %s holds a run of another config; training trial %d from scratch", folder, index)
    if not resume:
        _clear(folder, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.write_text(folder / CONFIG_FILE, config_text)

    seed_everything(cfg.seed + index)
    tasks = task_registry.build(cfg, positive_rates=positive_rates(cfg, splits.train))
    model = models.build(cfg)
    init_output_biases(model, tasks, splits.train)
    model = model.to(device)
    weighting = loss_weighting.build(cfg.comb_loss, cfg.task_list, cfg.loss_weights).to(device)
    optimizer = optim.build(cfg, model, extra=list(weighting.parameters()))
    loaders = {
        "train": data.loader(splits.train, batch_size=cfg.train_batch_size, shuffle=True,
                             num_workers=cfg.num_workers, seed=cfg.seed + index, drop_last=len(splits.train) > cfg.train_batch_size),
        "val": data.loader(splits.val, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.num_workers, seed=0),
        "test": data.loader(splits.test, batch_size=cfg.test_batch_size, shuffle=False, num_workers=cfg.num_workers, seed=0),
    }
    state = ckpt.load(folder / LAST_CHECKPOINT, map_location=device) if resume else None
    logger = RunLogger(
        name=folder.name, group=cfg.Experiment_name, config=cfg.model_dump(mode="json", by_alias=True),
        mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity, directory=cfg.wandb.dir,
        resume_id=None if state is None else state.get("wandb_id"),
    )
    try:
        trainer = Trainer(cfg, model=model, tasks=tasks, weighting=weighting, optimizer=optimizer,
                          loaders=loaders, device=device, folder=folder, logger=logger)
        if state is not None:
            trainer.load_state_dict(state)
            log.info("trial %d resumes after epoch %d", index, state["epoch"])
        trainer.fit()
        result = test_trial(cfg, model, tasks, loaders["test"], folder, device)
        layers = sparsity.layer_table(model.backbone)
        ckpt.write_text(folder / LAYER_TABLE, layers.to_csv(index=False))
        if cfg.group_sparsity:
            log.info("trial %d, backbone sparsity per layer (%s):\n%s", index, GLOBAL_CHECKPOINT, layers.to_string(index=False))
        ckpt.write_json(folder / TEST_FILE, result)
        logger.summary({"test": result["tasks"], "sparsity": result.get("sparsity", {})})
    finally:
        logger.finish()
    log.info("trial %d: %s", index, _short(result))
    return result


def write_report(cfg: ExperimentConfig, out_dir: str | Path = "out_csv") -> list[dict[str, float]]:
    """Collect every finished trial of the experiment into the two CSV tables."""
    rows = [
        report.trial_row(ckpt.read_json(trial_folder(cfg, i) / TEST_FILE), trial=i)
        for i in range(cfg.num_trials)
        if (trial_folder(cfg, i) / TEST_FILE).is_file()
    ]
    if rows:
        summary, _ = report.write_tables(rows, out_dir=out_dir, name=cfg.Experiment_name)
        log.info("wrote %s (%d trial(s))", summary, len(rows))
    return rows


def _stored_config_equals(folder: Path, config_text: str, *, ignore: frozenset[str]) -> bool:
    """Whether the trial folder was written by this config, up to keys in ``ignore`` (only then is it reused)."""
    if not (folder / CONFIG_FILE).is_file():
        return False
    stored = parse_yaml((folder / CONFIG_FILE).read_text(encoding="utf-8"), source=str(folder / CONFIG_FILE))
    current = parse_yaml(config_text, source="config")
    if not isinstance(stored, dict):
        return False
    return {k: v for k, v in stored.items() if k not in ignore} == {k: v for k, v in current.items() if k not in ignore}


def _clear(folder: Path, cfg: ExperimentConfig) -> None:
    """Remove a previous run's artefacts so a fresh trial never mixes with them."""
    names = [GLOBAL_CHECKPOINT, LAST_CHECKPOINT, TEST_FILE, LAYER_TABLE, *HISTORY_FILES,
             *(task_checkpoint(t) for t in cfg.task_list)]
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _short(result: dict[str, Any]) -> str:
    parts = [f"{task}: " + ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:3])
             for task, metrics in result["tasks"].items()]
    if "sparsity" in result:
        parts.append(f"group sparsity {100 * result['sparsity']['group_sparsity']:.1f}%")
    return " | ".join(parts)
