"""Tiny generated datasets shared by the data tests (generated once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from data.synthetic import make_mtan, make_nyud
from utils.config import ExperimentConfig, validate

ALL_NYU_TASKS = ["segmentsemantic", "depth_euclidean", "surface_normal", "edge_texture"]
TINY = {"num_images": 12, "height": 24, "width": 32}


@pytest.fixture(scope="session")
def nyud_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NYUD_MT layout, train.txt (10 ids) and val.txt (2 ids), no test.txt."""
    return make_nyud(tmp_path_factory.mktemp("nyud") / "NYUD_MT", seed=0, **TINY)


@pytest.fixture(scope="session")
def nyud_with_test_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nyud(tmp_path_factory.mktemp("nyud_test") / "NYUD_MT", seed=1, test_fraction=0.25, **TINY)


@pytest.fixture(scope="session")
def mtan_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MTAN layout with train/ (10) and val/ (2) folders."""
    return make_mtan(tmp_path_factory.mktemp("mtan") / "nyuv2", seed=2, **TINY)


@pytest.fixture
def make_cfg() -> Callable[..., ExperimentConfig]:
    """An NYU experiment config on `root`; keyword arguments override keys."""

    def make(root: Path | str, **overrides: Any) -> ExperimentConfig:
        raw = {
            "Experiment_name": "data_test",
            "task_list": ALL_NYU_TASKS,
            "data_dir_NYU": str(root),
            "input_shape": [24, 32],
            "num_workers": 0,
            # The encodings under test are ImageNet-normalised images and depth in metres;
            # the study's defaults ([0, 1] pixels, per-image-max depth) have tests of their own.
            "image_normalization": "imagenet",
            "depth_normalization": "none",
        }
        return validate({**raw, **overrides})

    return make
