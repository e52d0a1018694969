"""Broken configs exit with code 2 and one line naming the problem, fast and without traceback."""

import os
import subprocess
import sys
import time
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
    started = time.perf_counter()
    args = [a for o in overrides for a in ("--set", o)]
    result = run_cli("--config_exp", "config/demo_synthetic.yaml", *args)
    assert time.perf_counter() - started < 15  # the issue asks for 5 s; CI machines are shared
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in result.stderr


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
