"""Names of a trial folder's files: the study's layout, shared by training and evaluation."""

from __future__ import annotations

from pathlib import Path

from utils.config import ExperimentConfig

CONFIG_FILE = "config_file.yaml"
TEST_FILE = "test_dict.json"
GLOBAL_CHECKPOINT = "checkpoint.pt"
LAST_CHECKPOINT = "last.pt"
HISTORY_FILES = ("training_dict.json", "validation_dict.json")
LAYER_TABLE = "sparsity_layers.csv"


def trial_folder(cfg: ExperimentConfig, trial: int) -> Path:
    """``<checkpoint_folder>/<Experiment_name>_trial_<i>``."""
    return Path(cfg.checkpoint_folder) / f"{cfg.Experiment_name}_trial_{trial}"


def task_checkpoint(task: str) -> str:
    """File name of a task's best weights in a multitask trial."""
    return f"{task}_checkpoint.pt"
