"""λ sweeps through main_multi_trials.py: one experiment per λ, a table and a figure."""

from __future__ import annotations

import json
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
    for tag in ("0.0", "0.01", "0.1"):  # the study's naming: <name>_lambda_<str(λ)>
        assert (tmp_path / "runs" / f"tiny_sweep_lambda_{tag}_trial_0" / "test_dict.json").is_file()
    assert (tmp_path / "out_csv" / "tiny_sweep_lambda_0.1.csv").is_file()
    chosen = json.loads((tmp_path / "out_csv" / "tiny_sweep_best_lambda.json").read_text())
    assert chosen["band"] == [0.25, 0.8] and chosen["reference_lambda"] == 0.0
    assert table["val_delta_m"].iloc[0] == pytest.approx(0.0)  # the smallest λ against itself
    in_band = table[(table["group_sparsity_mean"] > 0.25) & (table["group_sparsity_mean"] < 0.8)]
    expected = None if in_band.empty else float(in_band.loc[in_band["val_delta_m"].idxmax(), "lambda"])
    assert chosen["best_lambda"] == expected
    assert table["best_lambda"].sum() == (expected is not None)


def test_best_lambda_is_the_best_validation_delta_m_inside_the_band() -> None:
    table = pd.DataFrame({"lambda": [1e-7, 1e-6, 1e-5, 1e-4], "group_sparsity_mean": [0.1, 0.3, 0.6, 0.9]})
    val = {  # depth error: lower is better; mIoU: higher is better
        1e-7: {"seg_mIoU": 0.50, "depth_abs_err": 1.0},
        1e-6: {"seg_mIoU": 0.52, "depth_abs_err": 1.2},   # Δm = (+4 − 20) / 2 = −8 %
        1e-5: {"seg_mIoU": 0.49, "depth_abs_err": 0.9},   # Δm = (−2 + 10) / 2 = +4 %
        1e-4: {"seg_mIoU": 0.70, "depth_abs_err": 0.5},   # best of all, but outside the band
    }
    directions = {"seg": {"mIoU": True}, "depth": {"abs_err": False}}
    chosen, gains = sweep.best_lambda(table, val, directions=directions, band=(0.25, 0.8))
    assert chosen == 1e-5
    assert gains[1e-6] == pytest.approx(-8.0) and gains[1e-5] == pytest.approx(4.0) and gains[1e-7] == 0.0
    assert sweep.best_lambda(table, val, directions=directions, band=(0.95, 0.99))[0] is None


def test_sweep_configs_name_and_switch_sparsity(tiny_config, tmp_path: Path) -> None:
    cfg = config.validate(tiny_config(tmp_path, tmp_path, lambda_sweep=[0.0, 1e-6]))
    configs = sweep.sweep_configs(cfg)
    dense, sparse = configs[0.0], configs[1e-6]
    assert (dense.Experiment_name, dense.group_sparsity) == ("tiny_mtl_lambda_0.0", False)
    assert (sparse.Experiment_name, sparse.group_sparsity, sparse.bb_optimizer_params.lambda_) == ("tiny_mtl_lambda_1e-06", True, 1e-6)
    assert sparse.lambda_sweep is None and sparse.task_list == cfg.task_list
    with pytest.raises(ConfigError, match="lambda_sweep and lambda_list"):  # found by validation, before torch loads
        config.validate({**config.to_dict(cfg), "lambda_list": [1e-5]})
    dense_only = {**config.to_dict(cfg), "group_sparsity": False}
    dense_only["bb_optimizer_params"] = {**dense_only["bb_optimizer_params"], "penalty": None}
    with pytest.raises(ConfigError, match="a λ > 0 trains with group sparsity"):
        config.validate(dense_only)


@pytest.mark.slow
def test_sparsity_sweep_trains_each_target_and_holds_it_exactly(tiny_config, nyud: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tiny_config(tmp_path, nyud, Experiment_name="tiny_targets", task_list=["depth_euclidean"], setup="singletask",
                      num_trials=1, epochs=3, target_epoch=2, finetune_epochs=1, sparsity_sweep=[0.25, 0.5],
                      max_batches_per_epoch=3)
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main_multi_trials.main(["--config_exp", str(path)]) == 0

    table = pd.read_csv(tmp_path / "out_csv" / "tiny_targets_sweep.csv")
    assert table["target"].tolist() == [0.25, 0.5] and list(table.columns[:3]) == ["target", "lambda", "lambda_std"]
    assert (table["lambda"] > 0).all()
    for target in (0.25, 0.5):
        folder = tmp_path / "runs" / f"tiny_targets_target_{target:g}_trial_0"
        result = json.loads((folder / "test_dict.json").read_text())["sparsity"]
        # the best checkpoint is of the frozen phase: exactly the target's share of groups, to one group
        assert result["zero_groups"] == round(target * result["total_groups"])
        history = json.loads((folder / "training_dict.json").read_text())
        assert history["target_group_sparsity"] == [target] * 4
        assert len(set(history["lambda"][1:])) == 1  # λ frozen at the end of epoch 1 (target_epoch 2)
    assert (tmp_path / "out_csv" / "tiny_targets_sweep.png").stat().st_size > 0
