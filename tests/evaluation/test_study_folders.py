"""Trial folders written by the study's own code: evaluated and plotted, their pickles never executed."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import get_outputs
import plot_sparsity_wandb
from tests.models.test_study import NYU, study_state_dict

EXP = "8_2_multi_seg_sn_depth_"
TASKS = ["segmentsemantic", "surface_normal", "depth_euclidean"]


def _pickled_study_objects(tmp: Path) -> tuple[object, object]:
    """Objects of classes the evaluating process cannot import: the study's optimizer, and a booby trap."""
    module = types.ModuleType("proxssi.optimizers.adamw_hf")

    class AdamW:  # stands in for the study's optimizer class
        def __init__(self) -> None:
            self.defaults = {"lr": 1e-4, "lambda_": torch.tensor(1e-6)}
            self.state = {"step": 10}

    class Trap:
        def __reduce__(self):  # a plain torch.load would run this
            return (os.system, (f"touch {tmp / 'EXECUTED'}",))

    AdamW.__module__, AdamW.__qualname__ = module.__name__, "AdamW"
    module.AdamW = AdamW
    return AdamW(), Trap()


@pytest.fixture(scope="module")
def study_runs(nyud: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding two trials as the study's main_multi_trials.py wrote them."""
    runs = tmp_path_factory.mktemp("study_runs")
    optimizer, trap = _pickled_study_objects(runs)
    names = ["proxssi", "proxssi.optimizers", "proxssi.optimizers.adamw_hf"]
    for name in names:
        sys.modules[name] = sys.modules.get(name) or types.ModuleType(name)
    sys.modules["proxssi.optimizers.adamw_hf"].AdamW = type(optimizer)
    try:
        for trial in range(2):
            folder = runs / f"{EXP}trial_{trial}"
            folder.mkdir()
            weights = study_state_dict(NYU, seed=trial)
            for layer in ("backbone.layer3.0.conv1.weight", "backbone.layer4.1.conv2.weight"):
                weights[layer][:, ::2] = 0  # some zero input-channel groups, as group sparsity leaves them
            torch.save({"epoch": 7, "model": weights, "optimizer": optimizer, "trap": trap}, folder / "checkpoint.pt")
            torch.save({"epoch": 5, "model": weights, "optimizer": optimizer}, folder / "segmentsemantic_checkpoint.pt")
            saved = {
                "Experiment_name": EXP.rstrip("_"), "dataset_name": "NYU", "task_list": TASKS, "setup": "multitask",
                "group_sparsity": True, "sparsity_threshold": 0, "backbone": "resnetd50", "checkpoint": False,
                "checkpoint_folder": "../results/runs/", "num_trials": 5, "wandb_img_log": False, "comb_loss": "uncertainity",
                "train_batch_size": 16, "val_batch_size": 8, "test_batch_size": 8, "input_shape": 32, "epochs": 1000,
                "num_workers": 8, "earlystop_patience": 25, "task_earlystop_patience": 25, "input_img_channels": 3,
                "seg_loss_fn": "softCEloss", "optimizer": "adam",
                "optimizer_params": {"learning_rate": 0.0001, "betas": [0.9, 0.999], "weight_decay": 0.01, "penalty": "l1_l2", "lambda": 1e-5},
                "bb_optimizer": "adam",
                "bb_optimizer_params": {"learning_rate": 0.0001, "betas": [0.9, 0.999], "weight_decay": 0.1, "penalty": "l1_l2",
                                        "lambda": torch.tensor(1e-6)},
                "num_input_ch": 3, "data_dir_NYU": "/home/someone/NYUD_MT", "device": "cuda",
                "NYU_num_classes": {"segmentsemantic": 41, "depth_euclidean": 1, "surface_normal": 3, "edge_texture": 1},
                "flag": dict.fromkeys(TASKS, 1), "es_loss": {},
            }
            (folder / "config_file.yaml").write_text(yaml.dump(saved))
            history = {"loss": {task: [1.0, 0.9] for task in [*TASKS, "total"]},
                       "metric": {"segmentsemantic": {"IoU": [0.1, 0.2]}, "surface_normal": {"cos_similarity": [0.5, 0.6]},
                                  "depth_euclidean": {"mae": [0.3, 0.2]}}}
            (folder / "training_dict.json").write_text(json.dumps(history))
            (folder / "validation_dict.json").write_text(json.dumps(history))
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return runs


def test_the_studys_trials_evaluate_without_running_their_pickles(study_runs: Path, nyud: Path, tmp_path: Path) -> None:
    out = tmp_path / "out_csv"
    code = get_outputs.main(["--exp_name", EXP, "--num_trials", "2", "--runs_dir", str(study_runs), "--data_dir", str(nyud),
                             "--device", "cpu", "--out_dir", str(out), "--columns", "study"])
    assert code == 0
    assert not (study_runs / "EXECUTED").exists()
    trials = pd.read_csv(out / f"{EXP}_trials.csv")
    assert trials["trial"].tolist() == [0, 1] and trials["segmentsemantic_mIoU"].notna().all()
    assert (trials["group_sparsity"] > 0).all() and trials["surface_normal_mean"].between(0, 180).all()
    study = pd.read_csv(out / f"{EXP}_study.csv")
    assert list(study.columns)[:2] == ["segmentsemantic_IoU", "surface_normal_cos_similarity"]  # task_list order


def test_the_studys_trials_plot(study_runs: Path) -> None:
    folder = study_runs / f"{EXP}trial_0"
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(folder), "--wandb", "disabled"]) == 0
    assert (folder / "sparsity_plot.png").stat().st_size > 0 and (folder / "training_curves.png").stat().st_size > 0
    assert not (study_runs / "EXECUTED").exists()


def test_a_study_folder_of_another_model_names_the_key(study_runs: Path, nyud: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "runs" / f"{EXP}trial_0"
    broken.mkdir(parents=True)
    for name in ("config_file.yaml", "training_dict.json", "validation_dict.json"):
        (broken / name).write_bytes((study_runs / f"{EXP}trial_0" / name).read_bytes())
    weights = study_state_dict(NYU)
    weights["backbone.layer2.0.conv2.weight"] = weights["backbone.layer2.0.conv2.weight"][:, :64]
    torch.save({"epoch": 1, "model": weights}, broken / "checkpoint.pt")
    code = get_outputs.main(["--exp_name", EXP, "--runs_dir", str(tmp_path / "runs"), "--data_dir", str(nyud),
                             "--device", "cpu", "--out_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "backbone.layer2.0.conv2.weight" in error[-1] and "Traceback" not in "\n".join(error)
    assert not (tmp_path / "out").exists()
