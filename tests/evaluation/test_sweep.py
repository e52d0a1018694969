"""λ sweeps through main_multi_trials.py: one experiment per λ, a table and a figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

import main_multi_trials
from engine import sweep
from utils import config
from utils.errors import ConfigError


def test_sweep_runs_each_lambda_and_sparsity_grows(tiny_config, nyud: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tiny_config(tmp_path, nyud, Experiment_name="tiny_sweep", task_list=["depth_euclidean"], setup="singletask",
                      num_trials=1, lambda_sweep=[0.0, 1e-2, 1e-1])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main_multi_trials.main(["--config_exp", str(path)]) == 0

    table = pd.read_csv(tmp_path / "out_csv" / "tiny_sweep_sweep.csv")
    assert table["lambda"].tolist() == [0.0, 1e-2, 1e-1]
    for column in ("group_sparsity_mean", "group_sparsity_std", "depth_euclidean_abs_err_mean", "depth_euclidean_rmse_std"):
        assert table[column].notna().all(), column
    sparsity = table["group_sparsity_mean"].tolist()
    assert sparsity[0] == 0 and sparsity[0] < sparsity[1] < sparsity[2], sparsity
    assert (tmp_path / "out_csv" / "tiny_sweep_sweep.png").stat().st_size > 0
    for tag in ("0", "0.01", "0.1"):
        assert (tmp_path / "runs" / f"tiny_sweep_lambda{tag}_trial_0" / "test_dict.json").is_file()
    assert (tmp_path / "out_csv" / "tiny_sweep_lambda0.1.csv").is_file()


def test_sweep_configs_name_and_switch_sparsity(tiny_config, tmp_path: Path) -> None:
    cfg = config.validate(tiny_config(tmp_path, tmp_path, lambda_sweep=[0.0, 1e-6]))
    configs = sweep.sweep_configs(cfg)
    dense, sparse = configs[0.0], configs[1e-6]
    assert (dense.Experiment_name, dense.group_sparsity) == ("tiny_mtl_lambda0", False)
    assert (sparse.Experiment_name, sparse.group_sparsity, sparse.bb_optimizer_params.lambda_) == ("tiny_mtl_lambda1e-6", True, 1e-6)
    assert sparse.lambda_sweep is None and sparse.task_list == cfg.task_list
    with pytest.raises(ConfigError, match="lambda_list"):
        sweep.sweep_configs(cfg.model_copy(update={"lambda_list": [1e-5]}))
