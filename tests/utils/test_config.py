"""The config schema: the study's files load unchanged; bad keys fail in one line naming them."""

from pathlib import Path

import pytest

from utils import config
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

STUDY_FILE = """
Experiment_name: 8_multi_seg_sn_depth_lambda1e-6
dataset_name: NYU
task_list: ['segmentsemantic', 'depth_euclidean', 'surface_normal']
setup: multitask
group_sparsity: True
sparsity_threshold: 0
backbone: resnetd50
checkpoint: False
checkpoint_folder: ../results/
num_trials: 5
wandb_img_log: True
comb_loss: uncertainity
train_batch_size: 16
val_batch_size: 8
test_batch_size: 8
input_shape: 256
epochs: 1000
earlystop_patience: 25
task_earlystop_patience: 25
num_workers: 8
input_img_channels: 3
num_input_ch: 3
seg_loss_fn: softCEloss
optimizer: adam
optimizer_params:
  learning_rate: 0.0001
  betas: [0.9, 0.999]
  weight_decay: 0.01
  penalty: 'l1_l2'
  lambda: 0.0001
bb_optimizer: adam
bb_optimizer_params:
  learning_rate: 0.0001
  betas: [0.9, 0.999]
  weight_decay: 0.1
  penalty: 'l1_l2'
  lambda: 1e-6
data_dir_NYU: /data/NYUD_MT
data_dir_celebA: /data/celebA
lambda_list: [1e-7, 1e-6]
"""


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(STUDY_FILE)
    return path


def test_study_file_loads_with_typed_values(study_file: Path) -> None:
    cfg = config.load(study_file)
    assert cfg.comb_loss == "uncertainity"
    assert cfg.bb_optimizer_params.lambda_ == pytest.approx(1e-6)  # YAML 1.1 would read a string
    assert cfg.bb_optimizer_params.betas == (0.9, 0.999)
    assert cfg.lambda_list == [1e-7, 1e-6]
    assert cfg.image_size == (256, 256)
    assert cfg.data_dir == Path("/data/NYUD_MT")


@pytest.mark.parametrize("name", ["demo_synthetic.yaml", "exp_single_mtl_NYU.yaml"])
def test_shipped_configs_load(name: str) -> None:
    assert config.load(REPO / "config" / name).task_list


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochz=3", "unknown key 'epochz' (did you mean 'epochs'?)"),
        ("bb_optimizer_params.lamda=1", "unknown key 'bb_optimizer_params.lamda' (did you mean 'lambda'?)"),
        ("epochs=ten", "key 'epochs'"),
        ("bb_optimizer_params.learning_rate=fast", "key 'bb_optimizer_params.learning_rate'"),
        ("setup=single", "'singletask' or 'multitask'"),
        ("num_trials=0", "key 'num_trials': must be at least 1, got 0"),
        ("task_list=[segmentsemantic, class_male]", "unknown NYU task 'class_male'"),
        ("setup=singletask", "needs exactly one task"),
        ("comb_loss=uncertainty", "key 'comb_loss'"),
        ("optimizer_params.betas=[1.2, 0.9]", "beta at index 0 must be in [0, 1), got 1.2"),
        ("group_sparsity=1", "key 'group_sparsity'"),
    ],
)
def test_bad_values_name_the_key(study_file: Path, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.load(study_file, [override])
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_overrides_reach_nested_keys(study_file: Path) -> None:
    cfg = config.load(study_file, ["bb_optimizer_params.lambda=1e-5", "input_shape=[96, 128]", "wandb.mode=disabled"])
    assert cfg.bb_optimizer_params.lambda_ == pytest.approx(1e-5)
    assert cfg.image_size == (96, 128)
    assert cfg.wandb.mode == "disabled"


def test_celeba_task_names_are_case_insensitive(study_file: Path) -> None:
    cfg = config.load(study_file, ["dataset_name=celebA", "task_list=[segmentsemantic, class_male, class_wavy_hair]"])
    assert [config.celeba_attribute(t) for t in cfg.task_list[1:]] == ["Male", "Wavy_Hair"]
    with pytest.raises(ConfigError, match="class_wavy"):
        config.load(study_file, ["dataset_name=celebA", "task_list=[class_wavy]"])


def test_dump_round_trips(study_file: Path, tmp_path: Path) -> None:
    cfg = config.load(study_file)
    again = tmp_path / "again.yaml"
    again.write_text(config.dump(cfg))
    assert config.load(again) == cfg


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
