"""Test trials with their best checkpoints: right after training, and later from their folders.

Training calls :func:`test_trial`. ``get_outputs.py`` calls :func:`evaluate_experiment`, which
finds an experiment's trial folders (ours or the study's), rebuilds each model from its
``config_file.yaml`` through :func:`engine.trial.build_trial` (the data may have moved since),
tests it, adds the inference cost, and writes the tables, with Δm when single-task baselines
are given.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader

import data
import tasks as task_registry
from engine import artifacts
from engine.loop import evaluate
from engine.measure import gflops_per_image, inference_cost
from engine.trial import Trial, build_trial, resolve
from models.compact import compact
from models.multitask import MultiTaskModel
from optim import sparsity
from utils import report
from utils.config import ExperimentConfig, check_tables, writable_folder
from utils.errors import DataError

log = logging.getLogger("gsmtl")

Split = Literal["test", "val"]
Columns = Literal["ours", "study"]


def test_trial(trial: Trial, folder: Path, loaders: Mapping[str, DataLoader], *, per_task: bool = True) -> dict[str, Any]:
    """Metrics and losses per task on each loader (``"test"``, and ``"val"`` if given) and the sparsity of the global best.

    Each task is tested with its own best checkpoint in multitask trials (``per_task``), else
    with ``checkpoint.pt``. The trial's model is left untouched: checkpoints load into a copy.
    Returns ``{"tasks", "loss", "checkpoints", "epochs", "sparsity"}`` for the test split and,
    with a val loader, ``{"val": {task: metrics}}``.
    """
    cfg, device = trial.cfg, trial.device
    model = copy.deepcopy(trial.model)
    result: dict[str, Any] = {"tasks": {}, "loss": {}, "checkpoints": {}, "epochs": {}}
    if "val" in loaders:
        result["val"] = {}
    plan = artifacts.checkpoint_plan(cfg, folder, per_task=per_task)
    for name in [*sorted(set(plan) - {artifacts.GLOBAL_CHECKPOINT}), artifacts.GLOBAL_CHECKPOINT]:
        weights, epoch = artifacts.read_weights(folder, name, cfg, device=device)
        artifacts.load_weights(model, weights, source=folder / name)
        if name == artifacts.GLOBAL_CHECKPOINT:
            result["sparsity"] = sparsity.summary(model.backbone)
            if cfg.sparsity_scope == "backbone+head_inputs":  # the heads' inputs are penalised too: their share zeroed
                result["sparsity"] |= {f"head_input_sparsity_{task}": value
                                       for task, value in sparsity.head_input_sparsity(model).items()}
        if name not in plan:
            continue
        subset = {task: trial.tasks[task] for task in plan[name]}
        for split, loader in loaders.items():
            losses, metrics = evaluate(model, subset, loader, device, amp=cfg.amp, channels_last=cfg.channels_last, desc=split,
                                       context=trial.context)
            for task in plan[name]:
                if split == "test":
                    result["tasks"][task] = metrics[task]
                    result["loss"][task] = losses[task]
                    result["checkpoints"][task] = name
                    result["epochs"][task] = epoch
                else:
                    result["val"][task] = metrics[task]
    return result


def evaluate_trial(
    folder: Path, cfg: ExperimentConfig, splits: data.Splits, *, split: Split = "test", measure_cost: bool = True,
    per_task: bool = True,
) -> dict[str, Any]:
    """Test one trial folder on ``split``: :func:`test_trial`'s result plus the inference cost under ``"extra"``."""
    trial = build_trial(cfg, splits)
    result = test_trial(trial, folder, {"test": trial.loaders[split]}, per_task=per_task)
    if measure_cost:
        model = global_model(trial, folder)
        result["extra"] = inference_cost(model, cfg.image_size, trial.device, batch_size=cfg.test_batch_size,
                                         amp=cfg.amp, channels_last=cfg.channels_last, with_compact=True)
    return result


def global_model(trial: Trial, folder: Path) -> MultiTaskModel:
    """A copy of the trial's model holding the global best checkpoint (the trial's model is not touched)."""
    model = copy.deepcopy(trial.model)
    weights, _ = artifacts.read_weights(folder, artifacts.GLOBAL_CHECKPOINT, trial.cfg, device=trial.device)
    artifacts.load_weights(model, weights, source=folder / artifacts.GLOBAL_CHECKPOINT)
    return model.eval()


def compact_size(model: MultiTaskModel, image_size: tuple[int, int], device) -> dict[str, float]:
    """The compact model's parameters and GFLOPs per image (cheap: no timing), for the tables of every trial."""
    small = compact(model)
    return {"params_compact": float(sum(p.numel() for p in small.parameters())),
            "gflops_compact": gflops_per_image(small, image_size, device)}


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_experiment` produced: per-trial rows and the tables' paths."""

    name: str
    rows: list[dict[str, float]]
    summary_path: Path
    trials_path: Path
    study_path: Path | None = None


def evaluate_experiment(
    exp_name: str, *, runs_dirs: Sequence[str | Path], num_trials: int | None = None, split: Split = "test",
    data_dir: str | Path | None = None, device: str = "auto", baselines: Sequence[str | Path] = (),
    out_dir: str | Path = "out_csv", columns: Columns = "ours", per_task: bool = True,
) -> Evaluation:
    """Evaluate every trial of an experiment and write ``<out_dir>/<name>.csv`` and ``<name>_trials.csv``.

    ``<name>`` is ``exp_name`` as typed (its last path part; ``_val`` appended for the
    validation split), as the study named its tables. When that is the experiment's own name,
    the table its training wrote, ``_eval`` is appended so a training table is never
    overwritten. With ``baselines`` (single-task ``_trials.csv`` files) each row gains
    ``delta_m`` and ``delta_m_<task>`` (REFERENCE §6); ``columns="study"`` also writes
    ``<name>_study.csv`` in the study's columns, units and order (REFERENCE §10).
    """
    # Everything a user can get wrong is checked before the first trial is tested (minutes, on real data).
    writable_folder(Path(out_dir), "--out_dir")
    folders = artifacts.find_trials(exp_name, runs_dirs=runs_dirs, num_trials=num_trials)
    configs = {index: resolve(artifacts.load_trial_config(folder, data_dir=data_dir, device=device))
               for index, folder in folders.items()}
    first_index, first = next(iter(configs.items()))
    for index, cfg in configs.items():
        if changes := artifacts.changed_keys(first, cfg):
            log.warning("trial %d of %s was trained with another config than trial %d (%s); the tables average it with the others",
                        index, exp_name, first_index, artifacts.describe_changes(changes))
    name = Path(exp_name).name + ("" if split == "test" else f"_{split}")
    if name == first.Experiment_name:
        name = f"{name}_eval"
    check_tables(out_dir, [f"{name}.csv", f"{name}_trials.csv"] + ([f"{name}_study.csv"] if columns == "study" else []),
                 "--out_dir")
    reference, directions = _baseline(baselines, first.task_list)
    built: dict[tuple, data.Splits] = {}  # trials of one experiment share their data: decode it once
    rows = []
    for index, folder in folders.items():
        cfg = configs[index]
        key = data.data_key(cfg)
        if key not in built:
            built[key] = _load_splits(cfg, moved_hint=data_dir is None)
        log.info("evaluating %s on the %s split", folder, split)
        rows.append(report.trial_row(evaluate_trial(folder, cfg, built[key], split=split, per_task=per_task), trial=index))
    if reference:
        rows = [{**row, **report.delta_m(row, reference, directions)} for row in rows]
    summary_path, trials_path = report.write_tables(rows, out_dir=out_dir, name=name)
    study_path = None
    if columns == "study":
        study_path = report.write_study_table(rows, out_dir=out_dir, name=name, tasks=first.task_list, dataset=first.dataset_name)
    return Evaluation(name=name, rows=rows, summary_path=summary_path, trials_path=trials_path, study_path=study_path)


def _baseline(paths: Sequence[str | Path], task_list: Sequence[str]) -> tuple[dict[str, float], dict[str, dict[str, bool]]]:
    """The baselines' means and the tasks' metric directions, read and checked before any trial is tested.

    A row holding every baseline column goes through :func:`utils.report.delta_m` once, so a
    task without baseline columns or a zero baseline fails now, with the message Δm gives later.
    """
    if not paths:
        return {}, {}
    reference = report.read_baseline(paths, tasks=task_list)
    directions = task_registry.directions(task_list)
    report.delta_m(dict.fromkeys(reference, 1.0), reference, directions)
    return reference, directions


def _load_splits(cfg: ExperimentConfig, *, moved_hint: bool) -> data.Splits:
    """``data.build(cfg)``; a missing dataset suggests ``--data_dir`` when ``moved_hint``."""
    try:
        return data.build(cfg)
    except DataError as error:
        hint = " (if the dataset moved since training, pass --data_dir)" if moved_hint else ""
        raise DataError(f"{cfg.Experiment_name}: {error}{hint}") from None
