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
import sys
from pathlib import Path

import models
import tasks as task_registry
from engine.evaluate import checkpoint_plan, load_trial_config
from engine.measure import surviving_channels
from engine.layout import GLOBAL_CHECKPOINT
from optim import sparsity
from utils import checkpoint as ckpt
from utils import plots
from utils.cli import main_guard
from utils.config import ExperimentConfig
from utils.logging import RunLogger

SPARSITY_PNG = "sparsity_plot.png"
CURVES_PNG = "training_curves.png"


def sparsity_panels(cfg: ExperimentConfig, folder: Path, checkpoint: str | None) -> list[plots.SparsityPanel]:
    """One panel per checkpoint (``checkpoint``, or every best one): its surviving channels and sparsity."""
    plan = checkpoint_plan(cfg, folder)
    names = [checkpoint] if checkpoint else [GLOBAL_CHECKPOINT, *sorted(set(plan) - {GLOBAL_CHECKPOINT})]
    model = models.build(cfg)
    panels = []
    for name in names:
        state = ckpt.load(folder / name)
        model.load_state_dict(state["model"])
        measures = sparsity.summary(model.backbone)
        best = "total loss" if name == GLOBAL_CHECKPOINT else ", ".join(plan.get(name, []))
        label = (f"{name} ({f'best {best}, ' if best else ''}epoch {state['epoch']}): group sparsity {100 * measures['group_sparsity']:.1f} %, "
                 f"filter sparsity {100 * measures['filter_sparsity']:.1f} %, "
                 f"parameter sparsity {100 * measures['param_sparsity']:.1f} %")
        panels.append(plots.SparsityPanel(label, surviving_channels(model.backbone)))
    return panels


def trial_figures(cfg: ExperimentConfig, folder: Path, *, checkpoint: str | None = None) -> dict[str, Path]:
    """Write the trial's sparsity plot and training curves into its folder; returns their paths."""
    panels = sparsity_panels(cfg, folder, checkpoint)
    lam = cfg.bb_optimizer_params.lambda_ if cfg.group_sparsity else 0.0
    title = (f"{folder.name}: {cfg.dataset_name}, {cfg.setup} ({', '.join(cfg.task_list)}), "
             f"{cfg.backbone}, λ = {lam:g}")
    paths = {"sparsity_plot": plots.save_png(plots.sparsity_figure(panels, title=title), folder / SPARSITY_PNG)}
    train = ckpt.read_json(folder / "training_dict.json")
    val = ckpt.read_json(folder / "validation_dict.json")
    metrics = {name: (task.primary_metric, val["metric"][name][task.primary_metric])
               for name, task in task_registry.build(cfg).items() if name in val["metric"]}
    curves = plots.training_curves_figure(train["sparsity"], metrics, title=title)
    paths["training_curves"] = plots.save_png(curves, folder / CURVES_PNG)
    return paths


def log_figures(cfg: ExperimentConfig, folder: Path, paths: dict[str, Path], *, mode: str, directory: str | Path) -> None:
    """Log the figures as images to a wandb run named after the trial, in the experiment's group."""
    logger = RunLogger(name=f"{folder.name}_plots", group=cfg.Experiment_name, config=cfg.model_dump(mode="json", by_alias=True),
                       mode=mode, project=cfg.wandb.project, entity=cfg.wandb.entity, directory=directory)
    try:
        for key, path in paths.items():
            logger.log_image(key, path, caption=folder.name)
    finally:
        logger.finish()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_folder_path", required=True, help="a trial folder (holding config_file.yaml and checkpoints)")
    parser.add_argument("--checkpoint", default=None,
                        help="plot only this checkpoint file of the folder (default: the global best and each task's best)")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default="offline",
                        help="wandb mode (default: offline; WANDB_MODE wins)")
    parser.add_argument("--wandb_dir", default=None, help="folder of the wandb run files (default: the trial folder's parent)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        folder = Path(args.exp_folder_path)
        cfg = load_trial_config(folder)
        paths = trial_figures(cfg, folder, checkpoint=args.checkpoint)
        log_figures(cfg, folder, paths, mode=args.wandb, directory=args.wandb_dir or folder.resolve().parent)
        for path in paths.values():
            print(f"wrote {path}")

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
