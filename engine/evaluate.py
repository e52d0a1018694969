"""Test trials with their best checkpoints, during training and again later from their folders.

Training calls :func:`test_trial` (metrics and sparsity only). ``get_outputs.py`` calls
:func:`evaluate_experiment`, which finds an experiment's trial folders, rebuilds each model
from its ``config_file.yaml`` (the data may have moved since), tests it, adds the inference
cost, and writes the study's tables, with Δm when single-task baselines are given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import data
import models
import tasks as task_registry
from engine.layout import CONFIG_FILE, GLOBAL_CHECKPOINT, task_checkpoint
from engine.measure import inference_cost
from engine.runtime import autocast, read_scalars, resolve_device, to_device
from optim import sparsity
from tasks.base import Task
from utils import checkpoint as ckpt
from utils import config, report
from utils.config import ExperimentConfig
from utils.errors import ConfigError, DataError

log = logging.getLogger("gsmtl")

Split = Literal["test", "val"]


@torch.no_grad()
def evaluate_loader(
    model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader, device: torch.device, *,
    amp: bool = False, channels_last: bool = False, desc: str = "val",
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean loss and split-level metrics of ``tasks`` over ``loader``."""
    model.eval()
    metrics = {name: task.metric().to(device) for name, task in tasks.items()}
    sums = {name: torch.zeros((), device=device) for name in tasks}
    count = 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        images, targets = to_device(batch, device, channels_last)
        with autocast(device, amp):
            outputs = model(images, tasks=list(tasks))
        for name, task in tasks.items():
            prediction = outputs[name].float()
            sums[name] += task.loss(prediction, targets[name]).detach() * images.shape[0]
            metrics[name].update(prediction, targets[name])
        count += images.shape[0]
    losses = read_scalars({name: total / max(count, 1) for name, total in sums.items()})
    computed = {name: read_scalars(metric.compute()) for name, metric in metrics.items()}
    return losses, computed


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
    """Metrics and losses per task on ``loader`` plus the sparsity of the global best model.

    The global best is loaded last, even when every task has its own best, so ``model`` is left
    holding the weights whose sparsity is reported.
    """
    result: dict[str, Any] = {"tasks": {}, "loss": {}, "checkpoints": {}, "epochs": {}}
    plan = checkpoint_plan(cfg, folder)
    for name in [*sorted(set(plan) - {GLOBAL_CHECKPOINT}), GLOBAL_CHECKPOINT]:
        state = ckpt.load(folder / name, map_location=device)
        model.load_state_dict(state["model"])
        if name == GLOBAL_CHECKPOINT:
            result["sparsity"] = sparsity.summary(model.backbone)
        if name not in plan:
            continue
        subset = {task: tasks[task] for task in plan[name]}
        losses, metrics = evaluate_loader(model, subset, loader, device, amp=cfg.amp, channels_last=cfg.channels_last, desc="test")
        for task in plan[name]:
            result["tasks"][task] = metrics[task]
            result["loss"][task] = losses[task]
            result["checkpoints"][task] = name
            result["epochs"][task] = state["epoch"]
    return result


def positive_rates(cfg: ExperimentConfig, train: Dataset) -> dict[str, float] | None:
    """Share of positive training images per attribute task (for ``class_balance``), if the split knows it."""
    rate = getattr(train, "positive_rate", None)
    if rate is None:
        return None
    return {task: rate(task) for task in cfg.task_list if task.startswith("class_")}


def find_trials(exp_name: str, *, runs_dir: str | Path = "runs", num_trials: int | None = None) -> dict[int, Path]:
    """The trial folders of an experiment by trial index, trial 0 first.

    ``exp_name`` is the experiment name, with or without the study's trailing underscore, or a
    path ending in it (``runs/NYU/8_2_multi_seg_sn_depth_``). Folders named ``<name>_trial_<i>``
    and ``<name>trial_<i>`` are found in the runs folder and in its sub-folders (the study kept
    NYU and CelebA runs apart). ``num_trials`` asks for trials 0 … n-1; by default all are taken.
    """
    if num_trials is not None and num_trials < 1:
        raise ConfigError(f"--num_trials {num_trials}: expected at least 1 (or leave it out for every trial found)")
    given = Path(exp_name)
    root = given.parent if given.parent != Path(".") else Path(runs_dir)
    base = given.name.rstrip("_")
    if not root.is_dir():
        raise DataError(f"runs folder '{root}' not found; pass --runs_dir with the folder holding the trial folders")
    pattern = re.compile(rf"{re.escape(base)}_?trial_(\d+)")
    found: dict[int, list[Path]] = {}
    for folder in _candidates(root):
        match = pattern.fullmatch(folder.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(folder)
    if not found:
        raise DataError(f"no trial folders '{base}_trial_<i>' in '{root}' or its sub-folders; check --exp_name and --runs_dir")
    wanted = sorted(found) if num_trials is None else range(num_trials)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise DataError(f"trial(s) {missing} of '{base}' not found in '{root}' (found trials {sorted(found)}); "
                        "lower --num_trials or train them")
    ambiguous = {i: found[i] for i in wanted if len(found[i]) > 1}
    if ambiguous:
        index, folders = next(iter(ambiguous.items()))
        raise DataError(f"trial {index} of '{base}' is in several folders {[str(f) for f in folders]}; "
                        "pass --runs_dir (or a path in --exp_name) to pick one")
    return {i: found[i][0] for i in wanted}


def _candidates(root: Path) -> list[Path]:
    """Sub-folders of ``root`` and of its sub-folders, sorted for a stable order."""
    children = sorted(path for path in root.iterdir() if path.is_dir())
    grandchildren = sorted(path for child in children for path in child.iterdir() if path.is_dir())
    return children + grandchildren


def load_trial_config(folder: Path, *, data_dir: str | Path | None = None, device: str | None = None) -> ExperimentConfig:
    """The config a trial was trained with; ``data_dir`` and ``device`` replace the stored ones.

    ``synthetic`` is switched off: evaluation must read the data that was trained on, never
    generate a new set where the stored path points.
    """

    if not (folder / CONFIG_FILE).is_file():
        raise DataError(f"'{folder}' holds no {CONFIG_FILE}; expected a trial folder written by main_multi_trials.py")
    cfg = config.load(folder / CONFIG_FILE)
    update: dict[str, Any] = {"synthetic": None}
    if data_dir is not None:
        update[f"data_dir_{cfg.dataset_name}"] = str(data_dir)
    if device is not None:
        update["device"] = device
    return cfg.model_copy(update=update)


def load_splits(cfg: ExperimentConfig, *, moved_hint: bool) -> data.Splits:
    """``data.build(cfg)``; a missing dataset suggests ``--data_dir`` when ``moved_hint``."""
    try:
        return data.build(cfg)
    except DataError as error:
        hint = " (if the dataset moved since training, pass --data_dir)" if moved_hint else ""
        raise DataError(f"{cfg.Experiment_name}: {error}{hint}") from None


def evaluate_trial(
    folder: Path, cfg: ExperimentConfig, splits: data.Splits, *, split: Split = "test", measure_cost: bool = True,
) -> dict[str, Any]:
    """Test one trial folder on ``split``: :func:`test_trial`'s result plus the inference cost under ``"extra"``."""

    device = resolve_device(cfg)
    loader = data.loader(getattr(splits, split), batch_size=cfg.test_batch_size, shuffle=False,
                         num_workers=cfg.num_workers, seed=0)
    tasks = task_registry.build(cfg, positive_rates=positive_rates(cfg, splits.train))
    model = models.build(cfg).to(device)
    result = test_trial(cfg, model, tasks, loader, folder, device)
    if measure_cost:
        result["extra"] = inference_cost(model, cfg.image_size, device, batch_size=cfg.test_batch_size,
                                         amp=cfg.amp, channels_last=cfg.channels_last)
    return result


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_experiment` produced: per-trial rows and the two tables' paths."""

    name: str
    rows: list[dict[str, float]]
    summary_path: Path
    trials_path: Path


def evaluate_experiment(
    exp_name: str, *, runs_dir: str | Path = "runs", num_trials: int | None = None, split: Split = "test",
    data_dir: str | Path | None = None, device: str = "auto", baselines: Sequence[str | Path] = (),
    out_dir: str | Path = "out_csv",
) -> Evaluation:
    """Evaluate every trial of an experiment and write ``<out_dir>/<name>.csv`` and ``<name>_trials.csv``.

    ``<name>`` is the experiment name without the trailing underscore (``_val`` appended for the
    validation split), the name training gives its tables. With ``baselines`` (single-task
    result CSVs), each row gains ``delta_m`` and ``delta_m_<task>`` (REFERENCE §6).
    """
    folders = find_trials(exp_name, runs_dir=runs_dir, num_trials=num_trials)
    built: dict[str, data.Splits] = {}  # trials of one experiment share their config: decode the data once
    rows = []
    for index, folder in folders.items():
        cfg = load_trial_config(folder, data_dir=data_dir, device=device)
        key = config.dump(cfg)
        if key not in built:
            built[key] = load_splits(cfg, moved_hint=data_dir is None)
        log.info("evaluating %s on the %s split", folder, split)
        rows.append(report.trial_row(evaluate_trial(folder, cfg, built[key], split=split), trial=index))
    if baselines:
        cfg = load_trial_config(next(iter(folders.values())))
        directions = {name: dict(task.higher_is_better) for name, task in task_registry.build(cfg).items()}
        reference = report.read_baseline(baselines, tasks=cfg.task_list)
        rows = [{**row, **report.delta_m(row, reference, directions)} for row in rows]
    name = Path(exp_name).name.rstrip("_") + ("" if split == "test" else f"_{split}")
    summary_path, trials_path = report.write_tables(rows, out_dir=out_dir, name=name)
    return Evaluation(name=name, rows=rows, summary_path=summary_path, trials_path=trials_path)
