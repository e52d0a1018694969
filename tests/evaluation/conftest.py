"""One tiny multi-task experiment, trained once per session and shared by the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data.synthetic import make_nyud
from engine import artifacts, trials
from tests import tiny
from utils import config

NAME = "tiny_mtl"


def tiny_raw(tmp: Path, data_dir: Path, **changes: Any) -> dict[str, Any]:
    """The shared tiny experiment, two batches an epoch."""
    return tiny.tiny_raw(NAME, tmp / "runs", data_dir, **{"max_batches_per_epoch": 2, **changes})


@dataclass(frozen=True)
class Trained:
    """Where the session's experiment lives."""

    root: Path
    data_dir: Path
    runs: Path
    cfg: config.ExperimentConfig

    def folder(self, trial: int) -> Path:
        return artifacts.trial_folder(self.cfg, trial)


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
