"""Plot which backbone channels a trial kept, and its training curves; log both to wandb.

    python plot_sparsity_wandb.py --exp_folder_path runs/NYU/8_2_multi_seg_sn_depth_trial_0
    python plot_sparsity_wandb.py --exp_folder_path <trial folder> --checkpoint segmentsemantic_checkpoint.pt --wandb disabled

Writes sparsity_plot.png (per conv layer of the shared backbone: all vs non-zero input-channel
groups, and a layers x channels survival map; one row per best checkpoint) and
training_curves.png (sparsity and each task's primary validation metric per epoch) into the
trial folder, and logs them as images to a wandb run (offline by default) in the experiment's group.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import artifacts
from engine.measure import surviving_channels
from engine.trial import Trial, build_trial
from optim import sparsity
from utils import cli, config, io, plots, report
from utils.cli import main_guard
from utils.errors import DataError
from utils.logging import RunLogger, wandb_mode

SPARSITY_PNG = "sparsity_plot.png"
CURVES_PNG = "training_curves.png"


def sparsity_panels(trial: Trial, folder: Path, checkpoint: str | None) -> list[plots.SparsityPanel]:
    """One panel per checkpoint (``checkpoint``, or every best one): its surviving channels and sparsity."""
    plan = artifacts.checkpoint_plan(trial.cfg, folder)
    names = [checkpoint] if checkpoint else [artifacts.GLOBAL_CHECKPOINT, *sorted(set(plan) - {artifacts.GLOBAL_CHECKPOINT})]
    model = trial.model
    panels = []
    for name in names:
        weights, epoch = artifacts.read_weights(folder, name, trial.cfg)
        artifacts.load_weights(model, weights, source=folder / name)
        measures = sparsity.summary(model.backbone)
        best = "total loss" if name == artifacts.GLOBAL_CHECKPOINT else ", ".join(plan.get(name, []))
        label = (f"{name} ({f'best {best}, ' if best else ''}epoch {epoch}): group sparsity {100 * measures['group_sparsity']:.1f} %, "
                 f"filter sparsity {100 * measures['filter_sparsity']:.1f} %, "
                 f"parameter sparsity {100 * measures['param_sparsity']:.1f} %")
        panels.append(plots.SparsityPanel(label, surviving_channels(model.backbone)))
    return panels


@dataclass(frozen=True)
class Curves:
    """What the training-curves figure draws, read from the history files and checked."""

    sparsity: dict[str, list[float]]  # ratio name -> value per epoch
    metrics: dict[str, tuple[str, list[float]]]  # task -> (metric name, value per epoch)
    lambdas: list[float]
    target: float | None


def curves(trial: Trial, folder: Path) -> Curves:
    """Per-epoch sparsity, λ, the target and each task's primary validation metric from the history files (ours or the study's).

    The study's history has no sparsity and names metrics its own way (``IoU``, ``mae``,
    ``cos_similarity``, ``F1``); its equivalent of each primary metric is plotted then. Every
    value drawn is checked here, so a hand-edited file is one line naming it and the key.
    """
    train_file, val_file = (folder / name for name in artifacts.HISTORY_FILES)
    train = _mapping(io.read_json(train_file), train_file, "")
    val = _mapping(io.read_json(val_file), val_file, "")
    histories = _mapping(val.get("metric", {}), val_file, "metric")
    metrics = {}
    for name, task in trial.tasks.items():
        history = _mapping(histories.get(name, {}), val_file, f"metric.{name}")
        for key in (task.primary_metric, *report.study_metric_names(name)):
            if key in history:
                metrics[name] = (key, _series(history[key], val_file, f"metric.{name}.{key}"))
                break
    spars = {key: _series(values, train_file, f"sparsity.{key}")
             for key, values in _mapping(train.get("sparsity", {}), train_file, "sparsity").items() if key.endswith("_sparsity")}
    targets = _series(train.get("target_group_sparsity") or [], train_file, "target_group_sparsity")
    return Curves(sparsity=spars, metrics=metrics, lambdas=_series(train.get("lambda", []), train_file, "lambda"),
                  target=targets[-1] if targets else None)


def _mapping(value: Any, file: Path, key: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a one-line error naming the history file and the key."""
    if not isinstance(value, dict):
        where = f"key '{key}' holds" if key else "holds"
        raise DataError(f"'{file}': {where} {_shown(value)}; expected a JSON object (a training history written by training)")
    return value


def _series(value: Any, file: Path, key: str) -> list[float]:
    """``value`` as one number per epoch (null read as NaN), else a one-line error naming the history file and the key."""
    if not isinstance(value, list) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
        raise DataError(f"'{file}': key '{key}' holds {_shown(value)}; expected a list of numbers, one per epoch")
    return [math.nan if v is None else float(v) for v in value]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def trial_figures(folder: Path, *, checkpoint: str | None = None) -> dict[str, Path]:
    """Write the trial's sparsity plot and training curves into its folder; returns their paths.

    Everything is read and checked first, so a broken file leaves no figure half-made.
    """
    for name in (SPARSITY_PNG, CURVES_PNG):
        problem = io.file_problem(folder / name)
        if problem is not None:
            raise DataError(f"figure '{folder / name}' cannot be written: {problem}; expected a place for a PNG file")
    cfg = artifacts.offline_config(folder)
    trial = build_trial(cfg)
    panels = sparsity_panels(trial, folder, checkpoint)
    history = curves(trial, folder)
    lam = (cfg.bb_optimizer_params.lambda_ or 0.0) if cfg.group_sparsity else 0.0
    title = (f"{folder.name}: {cfg.dataset_name}, {cfg.setup} ({', '.join(cfg.task_list)}), "
             f"{cfg.backbone}, λ = {lam:g}")
    sparsity_png = plots.sparsity_figure(panels, title=title)
    curves_png = plots.training_curves_figure(history.sparsity, history.metrics, title=title, lambdas=history.lambdas,
                                              target=history.target)
    return {"sparsity_plot": plots.save_png(sparsity_png, folder / SPARSITY_PNG),
            "training_curves": plots.save_png(curves_png, folder / CURVES_PNG)}


def log_figures(folder: Path, paths: dict[str, Path], *, mode: str, directory: str | Path) -> None:
    """Log the figures as images to a wandb run named after the trial, in the experiment's group."""
    cfg = artifacts.load_trial_config(folder)
    logger = RunLogger(name=f"{folder.name}_plots", group=cfg.Experiment_name, config=config.to_dict(cfg),
                       mode=mode, project=cfg.wandb.project, entity=cfg.wandb.entity, directory=directory)
    try:
        for key, path in paths.items():
            logger.log_image(key, path, caption=folder.name)
    finally:
        logger.finish()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_folder_path", required=True, type=cli.path_arg, help="a trial folder (holding config_file.yaml and checkpoints)")
    parser.add_argument("--checkpoint", default=None,
                        help="plot only this checkpoint file of the folder (default: the global best and each task's best)")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default="offline",
                        help="wandb mode (default: offline; WANDB_MODE wins)")
    parser.add_argument("--wandb_dir", type=cli.path_arg, default=None, help="folder of the wandb run files (default: the trial folder's parent)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        folder = Path(args.exp_folder_path)
        if not folder.is_dir():
            raise DataError(f"--exp_folder_path '{folder}' is not a folder; expected a trial folder")
        directory = args.wandb_dir or folder.resolve().parent
        if wandb_mode(args.wandb) != "disabled":  # checked before any figure is made
            config.writable_folder(Path(directory), "--wandb_dir")
        paths = trial_figures(folder, checkpoint=args.checkpoint)
        log_figures(folder, paths, mode=args.wandb, directory=directory)
        for path in paths.values():
            print(f"wrote {path}")

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
