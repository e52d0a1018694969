"""Broken configs exit with code 2 and one line naming the problem, fast and without traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main_multi_trials.py", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["epochz=3"], "unknown key 'epochz' (did you mean 'epochs'?)"),
        (["comb_loss=mean"], "key 'comb_loss'"),
        (["epochs=ten"], "key 'epochs'"),
        (["synthetic=null", "data_dir_NYU=/nonexistent/nyu"], "/nonexistent/nyu"),
    ],
)
def test_broken_config_exits_2_with_one_line(overrides: list[str], expected: str) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    result = run_cli("--config_exp", "config/demo_synthetic.yaml", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in result.stderr


def test_a_broken_config_is_refused_before_torch_is_imported() -> None:
    """Fast by construction (no timing): the config is checked before the heavy imports."""
    code = ("import sys, main_multi_trials; "
            "code = main_multi_trials.main(['--config_exp', 'config/demo_synthetic.yaml', '--set', 'epochz=3']); "
            "print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stderr


def test_missing_config_file_exits_2() -> None:
    result = run_cli("--config_exp", "config/nope.yaml")
    assert result.returncode == 2 and "config/nope.yaml" in result.stderr


@pytest.mark.parametrize(("key", "what"), [
    ("checkpoint_folder", "config key 'checkpoint_folder'"),
    ("wandb.dir", "config key 'wandb.dir'"),
    ("data_dir_NYU", "config key 'data_dir_NYU' (generated)"),
])
def test_an_output_folder_under_a_file_exits_2_before_training(tmp_path: Path, key: str, what: str) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = run_cli("--config_exp", "config/demo_synthetic.yaml", "--set", f"{key}={blocker}/nested")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {what}: '{blocker}/nested' cannot be written: its parent '{blocker}' exists and is not a folder; "
        "expected a folder to write into")


@pytest.mark.parametrize(("block", "expected"), [
    (lambda out: (out / "demo_synthetic_trials.csv").mkdir(parents=True),
     "'out_csv/demo_synthetic_trials.csv' is a folder; expected the place of a table (move it away)"),
    (lambda out: out.write_text("not a folder"),
     "'out_csv' cannot be written: it exists and is not a folder; expected a folder to write into"),
], ids=["a folder in place of a table", "a file in place of the folder"])
def test_a_blocked_tables_place_exits_2_before_training(tmp_path: Path, block, expected: str) -> None:
    block(tmp_path / "out_csv")
    config = REPO / "config" / "demo_synthetic.yaml"
    result = subprocess.run([sys.executable, str(REPO / "main_multi_trials.py"), "--config_exp", str(config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    assert result.stderr.strip().splitlines()[-1] == f"error: the tables' folder: {expected}"


def test_validating_a_config_imports_neither_torch_nor_torchvision() -> None:
    """The front door stays fast: a broken key is reported before the heavy imports."""
    code = (
        "import sys; from utils import config; "
        "cfg = config.load('config/exp_single_mtl_NYU.yaml'); config.validate(dict(cfg.model_dump(by_alias=True))); "
        "heavy = sorted(m for m in ('torch', 'torchvision', 'torchmetrics', 'pandas') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_gridsearch_with_malformed_optimizer_params_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("Experiment_name: a\ntask_list: [depth_euclidean]\nbb_optimizer_params: 5\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "main_gridsearch.py", "--config_exp", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: key 'bb_optimizer_params': Input should be a valid dictionary or instance of OptimizerParams (got 5)"]


@pytest.mark.parametrize("command", [
    ["main_multi_trials.py"], ["main_gridsearch.py"], ["get_outputs.py"], ["get_out_put_celeb.py"],
    ["plot_sparsity_wandb.py"], ["-m", "engine.study"], ["-m", "models.compact"], ["-m", "data.prepare_celeba"],
    ["-m", "data.synthetic"],
])
def test_a_bad_flag_is_one_error_line_and_exit_2(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command, "--no-such-flag"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("--help)")
    assert "--no-such-flag" in lines[0] or "arguments are required" in lines[0]


@pytest.mark.parametrize("command", [
    ["main_multi_trials.py", "--timeout_min", "-5"],
    ["main_multi_trials.py", "--gpus_per_trial", "-2"],
    ["main_multi_trials.py", "--array_parallelism", "0"],
    ["main_multi_trials.py", "--cpus_per_trial", "0"],
    ["-m", "engine.study", "--config", "config/study_demo.yaml", "--timeout_min", "0"],
    ["get_outputs.py", "--exp_name", "x", "--num_trials", "0"],
    ["get_outputs.py", "--exp_name", "x", "--out_dir", ""],
    ["-m", "data.synthetic", "--out", ""],
    ["-m", "data.synthetic_faces", "--out", "{tmp}/faces", "--seed", "-1"],
    ["-m", "data.prepare_celeba", "--raw", "{tmp}/raw", "--out", "{tmp}/out", "--workers", "0"],
    ["-m", "models.compact", "--exp_folder_path", ""],
], ids=lambda command: " ".join(command))
def test_a_bad_flag_value_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, command: list[str]) -> None:
    command = [part.format(tmp=tmp_path) for part in command]
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [
    ["-m", "data.synthetic", "--num-images", "4", "--height", "16", "--width", "16"],
    ["-m", "data.synthetic_faces", "--num-images", "2", "--image-size", "16", "--mask-size", "16"],
], ids=["data.synthetic", "data.synthetic_faces"])
def test_a_generator_writes_over_its_own_output_only(tmp_path: Path, command: list[str]) -> None:
    """Not among someone's files, nor into a real dataset (which has the same sub-folders)."""
    def generate(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *command, "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    for name in ("gt_sets", "CelebA-HQ-img"):
        (tmp_path / "real" / name).mkdir(parents=True)
    result = generate(tmp_path / "real")
    assert result.returncode == 2 and "non-empty folder that holds no dataset" in result.stderr
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["CelebA-HQ-img", "gt_sets"]
    assert sorted(p.name for p in (tmp_path / "real" / "gt_sets").iterdir()) == []
    assert generate(tmp_path / "mine").returncode == 0 and (tmp_path / "mine" / ".synthetic.json").is_file()
    assert generate(tmp_path / "mine").returncode == 0, "a rerun writes over the generator's own output"


def test_submitit_folder_is_checked_before_anything_is_submitted(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("not a folder")
    result = run_cli("--config_exp", "config/demo_synthetic.yaml", "--launcher", "submitit", "--submitit_folder", f"{blocker}/x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --submitit_folder: '{blocker}/x' cannot be written")
