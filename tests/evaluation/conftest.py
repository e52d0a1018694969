"""One tiny multi-task experiment, trained once per session and shared by the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data.synthetic import make_nyud
from engine import trials
from utils import config

NAME = "tiny_mtl"


def tiny_raw(tmp: Path, data_dir: Path, **changes: Any) -> dict[str, Any]:
    """A config small enough to train in seconds on two shared CPU cores."""
    raw: dict[str, Any] = {
        "Experiment_name": NAME,
        "dataset_name": "NYU",
        "task_list": ["segmentsemantic", "depth_euclidean", "surface_normal"],
        "setup": "multitask",
        "group_sparsity": True,
        "backbone": "resnetd18",
        "backbone_width": 0.125,
        "head_channels": 8,
        "checkpoint_folder": str(tmp / "runs"),
        "num_trials": 2,
        "train_batch_size": 4,
        "val_batch_size": 8,
        "test_batch_size": 8,
        "input_shape": [32, 48],
        "epochs": 2,
        "max_batches_per_epoch": 2,
        "num_workers": 0,
        "data_dir_NYU": str(data_dir),
        "optimizer_params": {"learning_rate": 1e-3, "penalty": None},
        "bb_optimizer_params": {"learning_rate": 1e-3, "penalty": "l1_l2", "lambda": 1e-2},
        "wandb": {"mode": "disabled"},
    }
    raw.update(changes)
    return raw


@dataclass(frozen=True)
class Trained:
    """Where the session's experiment lives."""

    root: Path
    data_dir: Path
    runs: Path
    cfg: config.ExperimentConfig

    def folder(self, trial: int) -> Path:
        return trials.trial_folder(self.cfg, trial)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., dict[str, Any]]:
    """Builds the raw config of a tiny experiment: ``tiny_config(tmp, data_dir, **changes)``."""
    return tiny_raw


@pytest.fixture(scope="session")
def nyud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-image synthetic NYUD_MT dataset (32 x 48)."""
    return make_nyud(tmp_path_factory.mktemp("data") / "nyud", num_images=16, height=32, width=48, seed=3)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, nyud: Path) -> Trained:
    """Two trials of the tiny experiment, trained once (tables go to the tmp folder, not the repo)."""
    root = tmp_path_factory.mktemp("experiment")
    cfg = config.validate(tiny_raw(root, nyud))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        trials.run(cfg)
    return Trained(root=root, data_dir=nyud, runs=root / "runs", cfg=cfg)
