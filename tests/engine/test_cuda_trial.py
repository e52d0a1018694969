"""A tiny trial end to end on CUDA, through the engine: bf16 autocast, channels-last, torch.compile, pinned
memory and non-blocking copies; its checkpoints evaluate on the CPU, and a stopped run resumes on CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import get_outputs
from engine import artifacts, trials
from engine.trainer import Interrupted
from tests import tiny
from utils import checkpoint as ckpt
from utils import config, io

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_config(tmp: Path, **changes) -> config.ExperimentConfig:
    synthetic = {"num_images": 24, "height": 32, "width": 48, "seed": 1}
    return config.validate(tiny.tiny_raw("gpu", tmp / "runs", tmp / "nyud", **{
        "synthetic": synthetic, "num_trials": 1, "device": "cuda", "amp": True, "channels_last": True, **changes}))


def test_a_compiled_bf16_channels_last_trial_trains_on_cuda_and_evaluates_on_the_cpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = cuda_config(tmp_path, compile=True)
    assert [row["trial"] for row in trials.run(cfg)] == [0]
    folder = artifacts.trial_folder(cfg, 0)
    trained = io.read_json(folder / artifacts.TEST_FILE)["tasks"]
    assert all(math.isfinite(value) for metrics in trained.values() for value in metrics.values()), trained
    weights = ckpt.load(folder / artifacts.GLOBAL_CHECKPOINT)["model"]
    assert all(value.device.type == "cpu" for value in weights.values())  # loads on a machine without a GPU
    assert len(io.read_json(folder / "training_dict.json")["loss"]["total"]) == cfg.epochs
    out = tmp_path / "eval"
    assert get_outputs.main(["--exp_name", "gpu", "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(out),
                             "--device", "cpu"]) == 0
    row = pd.read_csv(out / "gpu_eval_trials.csv").iloc[0]
    for task, metrics in trained.items():
        for metric, value in metrics.items():  # bf16 on the GPU against float32 on the CPU: close, not equal
            assert row[f"{task}_{metric}"] == pytest.approx(value, rel=0.1, abs=0.02), f"{task}_{metric}"


def test_a_trial_stopped_on_cuda_resumes_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = cuda_config(tmp_path, epochs=3)
    polls = {"n": 0}

    def stop_after_eight_steps() -> str | None:
        polls["n"] += 1
        return "SIGTERM" if polls["n"] > 8 else None

    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        trials.run(cfg, stop=stop_after_eight_steps)
    folder = artifacts.trial_folder(cfg, 0)
    assert not (folder / artifacts.TEST_FILE).exists() and (folder / artifacts.LAST_CHECKPOINT).is_file()
    assert [row["trial"] for row in trials.run(cfg.model_copy(update={"checkpoint": True}))] == [0]
    history = io.read_json(folder / "training_dict.json")["loss"]["total"]
    assert len(history) == 3 and all(math.isfinite(value) for value in history)
