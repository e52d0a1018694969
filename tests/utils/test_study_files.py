"""The study's own YAML files and the configs its scripts saved load here, with the study's defaults."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from utils import config
from utils.errors import ConfigError

#: The keys and spellings of the study's three files (quoted keys, trailing comments, its paths).
COMMON = """
'dataset_name' : 'NYU'  ###### 'NYU'
'setup': 'multitask' #### 'multitask', 'singletask'
'group_sparsity' : True
'sparsity_threshold': 0 #### 0 means it was applied from the start.
'backbone' : 'resnetd50' #### resnetd50,resnetd101
'checkpoint': False
'checkpoint_folder': '../results/runs/'
'wandb_img_log': False
'comb_loss' : 'uncertainity'   # 'uncertainity', 'sum', 'wt_sum'
'train_batch_size' : 16
'val_batch_size' : 8
'test_batch_size' : 8
'input_shape': 256
'epochs' : 1000
'num_workers': 8
'earlystop_patience': 25
'task_earlystop_patience' : 25
'input_img_channels': 3
'seg_loss_fn': 'softCEloss'   ####  dice, Tversky,  softCEloss, Focal
'optimizer': 'adam'    ### 'sgd', 'adamw' , 'adam'
'optimizer_params':
    'learning_rate': 0.0001
    'betas': [0.9, 0.999]
    'weight_decay' : 0.01
    'penalty' : 'l1_l2'
    'lambda' : 0.00001   #### not being used
'bb_optimizer': 'adam'    ### in case of sparsity it is always ADAMW
'bb_optimizer_params':
    'learning_rate': 0.0001 #####0.00001
    'betas': [0.9, 0.999]
    'weight_decay' : 0.1
    'penalty' : 'l1_l2'
    'lambda' : {lam}
'num_input_ch' : 3
'data_dir_NYU' : "/home/someone/NYU_dataset/NYUD_MT"
"""
NYU_FILE = ("'Experiment_name': '8_multi_seg_sn_depth_lambda1e-6'\n"
            "'task_list': ['segmentsemantic','surface_normal','depth_euclidean']\n'num_trials': 0\n"
            + COMMON.format(lam="0.000001 #### for sparsity"))
GRID_FILE = ("'Experiment_name': 'GridSearch_8_multi_seg_sn_depth'\n"
             "'task_list': ['segmentsemantic','depth_euclidean','surface_normal']\n"
             + COMMON.format(lam="None ####  change in the main_gridsearch.py file"))
CELEBA_FILE = ("'Experiment_name': '11_1_multi_male_smile_1e5__'\n'task_list': ['class_male','class_smile']\n'num_trials': 0\n"
               "# 'lambda_list' : [0, 0.000001, 0.00001, 0.0001]\n"
               + COMMON.format(lam="0.00001").replace("'dataset_name' : 'NYU'", "'dataset_name' : 'celebA'")
               .replace("'earlystop_patience': 25", "'earlystop_patience': 10")
               + "'data_dir_celebA' : \"/home/someone/CelebAMask-HQ\"\n")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text", [NYU_FILE, CELEBA_FILE])
def test_the_studys_files_load_once_num_trials_is_set(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "study.yaml", text)
    with pytest.raises(ConfigError, match=r"num_trials.*study trained 5"):
        config.load(path)
    cfg = config.load(path, ["num_trials=5", "epochs=2", "train_batch_size=4"])
    assert cfg.num_trials == 5 and cfg.checkpoint_folder == "../results/runs/"


def test_the_grid_search_file_loads_with_lambda_none_for_a_sweep(tmp_path: Path) -> None:
    path = write(tmp_path, "grid.yaml", GRID_FILE)
    with pytest.raises(ConfigError, match="main_gridsearch.py"):
        config.load(path)  # λ None trains nothing on its own
    cfg = config.load(path, ["lambda_sweep=[1e-7, 1e-6]"])
    assert cfg.bb_optimizer_params.lambda_ is None and cfg.lambda_sweep == [1e-7, 1e-6] and cfg.num_trials == 1


def test_defaults_follow_what_the_studys_code_did(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "study.yaml", NYU_FILE), ["num_trials=1"])
    spec = cfg.optimizer_spec
    assert (spec.backbone_kind, spec.backbone.eps) == ("adamw", 1e-6)  # "in case of sparsity it is always ADAMW"
    assert (spec.head_kind, spec.head.eps, spec.head.weight_decay) == ("adam", 1e-8, 0.01)
    assert cfg.depth_loss == "mse" and cfg.depth_normalization == "per_image_max" and cfg.depth_output == "sigmoid"
    assert cfg.normals_activation == "tanh" and cfg.image_normalization == "none"
    assert cfg.class_threshold == 0.4 and cfg.lambda_every == 10 and cfg.celebA_subset == "first_third"
    assert cfg.penalty_in_loss is False  # a kept fix: the prox alone is the method
    honoured = cfg.model_copy(update={"group_sparsity_optimizer": "bb_optimizer"}).optimizer_spec
    assert (honoured.backbone_kind, honoured.backbone.eps) == ("adam", 1e-8)
    dense = config.load(write(tmp_path, "dense.yaml", NYU_FILE), ["num_trials=1", "group_sparsity=False"]).optimizer_spec
    assert dense.backbone_kind == "adam"  # bb_optimizer is honoured without group sparsity


def test_a_saved_study_config_loads_and_lists_its_extra_keys_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved = yaml.safe_load(NYU_FILE.replace("#", "# "))
    saved.update(num_trials=5, device="cuda", NYU_num_classes={"segmentsemantic": 41, "depth_euclidean": 1},
                 flag={"segmentsemantic": 1}, es_loss={}, best_lambda=1e-6, meta=True)
    saved["bb_optimizer_params"]["lambda"] = torch.tensor(1e-5)  # the grid search dumped λ as a tensor
    path = write(tmp_path, "config_file.yaml", yaml.dump(saved))  # what the study's yaml.dump wrote
    assert "!!python/object/apply:torch._utils._rebuild_tensor_v2" in path.read_text()
    with caplog.at_level(logging.INFO, logger="gsmtl"):
        cfg = config.load(path)
    assert cfg.bb_optimizer_params.lambda_ == 1e-5 and cfg.meta is True and cfg.device == "cuda"
    assert cfg.ignored_keys == ("NYU_num_classes", "flag", "es_loss", "best_lambda")
    assert [r.message.count("ignoring") for r in caplog.records] == [1]
    with pytest.raises(ConfigError, match="unknown key 'flags'"):
        config.validate({**config.to_dict(cfg), "flags": {}})  # any other unknown key stays an error


@pytest.mark.parametrize(("text", "expected"), [
    ("Experiment_name: a\nepochs: 2\nepochs: 3\n", "duplicate key 'epochs'"),
    ("x: !!python/object/apply:os.system ['echo owned']\n", "not allowed in a config"),
    ("Experiment_name: a\ntask_list: [depth_euclidean]\noptimizer_params: {learning_rate: .inf}\n", "learning_rate"),
    ("Experiment_name: a\ntask_list: [depth_euclidean]\ninput_shape: 256000\n", r"input_shape.*integers from 1 to 8192 \(got 256000\)"),
    ("seed: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("Experiment_name: a\ntask_list: [depth_euclidean]\nsynthetic: {height: 1000000}\n", "synthetic.height"),
])
def test_unsafe_or_ambiguous_yaml_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config.load(write(tmp_path, "bad.yaml", text))


def test_a_file_that_is_not_utf8_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("Experiment_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8"):
        config.load(path)
