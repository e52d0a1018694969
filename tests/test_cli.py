"""Broken configs exit with code 2 and one line naming the problem, fast and without traceback."""

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


def test_checkpoint_folder_that_is_a_file_exits_2_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = run_cli("--config_exp", "config/demo_synthetic.yaml", "--set", f"checkpoint_folder={blocker}/nested")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: config key 'checkpoint_folder': '{blocker}' is a file; expected a folder for the trial folders")


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
