"""One trial on two processes (torchrun, gloo): identical weights on every rank, rank 0 alone writes, exact metrics, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import get_outputs
from engine import artifacts
from tests import tiny
from utils import io

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.slow


def torchrun(tmp: Path, out: Path, *args: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out), "--config_exp", str(tmp / "ddp.yaml"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_config(tmp: Path, name: str, **changes) -> None:
    synthetic = {"num_images": 40, "height": 32, "width": 48, "seed": 1}
    raw = tiny.tiny_raw(name, tmp / "runs", tmp / "nyud", synthetic=synthetic, num_trials=1, epochs=3,
                        train_batch_size=8, augmentation=True, log_every=1, **changes)
    (tmp / "ddp.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


def test_two_processes_train_one_trial(tmp_path: Path) -> None:
    write_config(tmp_path, "ddp")
    process = torchrun(tmp_path, tmp_path / "weights")
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    rank0 = torch.load(tmp_path / "weights" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights" / "rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key  # the proximal step is the same on every rank
    folder = tmp_path / "runs" / "ddp_trial_0"
    names = {p.name for p in folder.iterdir()}
    assert {"config_file.yaml", "checkpoint.pt", "last.pt", "training_dict.json", "validation_dict.json",
            "test_dict.json", "sparsity_layers.csv"} <= names
    assert not list(folder.glob(".*.tmp"))  # no half-written files: one writer
    assert sorted(p.name for p in (tmp_path / "out_csv").iterdir()) == ["ddp.csv", "ddp_trials.csv"]
    assert output.count("wrote out_csv/ddp.csv") == 1  # rank 0 alone writes (and logs)
    # The test metrics of the 2-process run equal a single-process evaluation of the saved checkpoints.
    trained = io.read_json(folder / artifacts.TEST_FILE)["tasks"]
    out = tmp_path / "eval"
    assert get_outputs.main(["--exp_name", "ddp", "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(out), "--device", "cpu"]) == 0
    import pandas as pd

    row = pd.read_csv(out / "ddp_eval_trials.csv").iloc[0]
    for task, metrics in trained.items():
        for metric, value in metrics.items():
            assert row[f"{task}_{metric}"] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{task}_{metric}"  # batch shapes differ: float32 rounding


def test_a_two_process_run_killed_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    write_config(straight, "ddp")
    process = torchrun(straight, straight / "weights")
    assert process.wait(timeout=900) == 0
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    write_config(stopped, "ddp")
    process = torchrun(stopped, stopped / "weights")
    history = stopped / "runs" / "ddp_trial_0" / "validation_dict.json"
    deadline = time.monotonic() + 600
    while not history.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0 and "interrupted by SIGTERM" in output, output[-3000:]
    resumed = torchrun(stopped, stopped / "weights", "--set", "checkpoint=true")
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output[-3000:]
    a = torch.load(straight / "weights" / "rank0.pt", weights_only=True)
    for rank in (0, 1):
        b = torch.load(stopped / "weights" / f"rank{rank}.pt", weights_only=True)
        for key, value in a.items():
            assert torch.equal(value, b[key]), (rank, key)
