"""A multitask experiment small enough to train in seconds on two shared CPU cores."""

from pathlib import Path
from typing import Any


def tiny_raw(name: str, runs: Path, data_dir: Path, **changes: Any) -> dict[str, Any]:
    """Raw config keys of the tiny experiment ``name``; ``changes`` override or add keys."""
    raw: dict[str, Any] = {
        "Experiment_name": name,
        "dataset_name": "NYU",
        "task_list": ["segmentsemantic", "depth_euclidean", "surface_normal"],
        "setup": "multitask",
        "group_sparsity": True,
        "backbone": "resnetd18",
        "backbone_width": 0.125,
        "head_channels": 8,
        "checkpoint_folder": str(runs),
        "num_trials": 2,
        "train_batch_size": 4,
        "val_batch_size": 8,
        "test_batch_size": 8,
        "input_shape": [32, 48],
        "epochs": 2,
        "num_workers": 0,
        "data_dir_NYU": str(data_dir),
        "optimizer_params": {"learning_rate": 1e-3, "penalty": None},
        "bb_optimizer_params": {"learning_rate": 1e-3, "penalty": "l1_l2", "lambda": 1e-2},
        "wandb": {"mode": "disabled"},
    }
    raw.update(changes)
    return raw
