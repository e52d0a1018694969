"""Stops on request (SIGTERM, Ctrl-C) save last.pt after the current step and resume exactly; NaN stops a trial."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import data
from engine import artifacts, trials
from engine.trainer import Interrupted
from engine.trial import build_trial, resolve
from tests import tiny
from utils import checkpoint as ckpt
from utils import config, io

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp: Path, **changes) -> config.ExperimentConfig:
    synthetic = {"num_images": 24, "height": 32, "width": 48, "seed": 1}
    return config.validate(tiny.tiny_raw("stop", tmp / "runs", tmp / "nyud", **{"synthetic": synthetic, "num_trials": 1,
                                                                                    "epochs": 3, "augmentation": True, **changes}))


class StopAfter:
    """A stop request that arrives after ``steps`` polls (one poll per training step)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.polls = steps, 0

    def __call__(self) -> str | None:
        self.polls += 1
        return "SIGTERM" if self.polls > self.steps else None


def _weights(cfg: config.ExperimentConfig) -> dict[str, torch.Tensor]:
    return ckpt.load(artifacts.trial_folder(cfg, 0) / artifacts.LAST_CHECKPOINT)["model"]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch end"])
def test_a_stop_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.chdir(tmp_path)
    straight = tiny_config(tmp_path / "a")
    trials.run(straight)
    per_epoch = len(build_trial(resolve(straight), data.build(resolve(straight)), train=True).loaders["train"])
    steps = per_epoch + 2 if where == "mid-epoch" else 2 * per_epoch
    stopped = tiny_config(tmp_path / "b")
    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        trials.run(stopped, stop=StopAfter(steps))
    folder = artifacts.trial_folder(stopped, 0)
    state = artifacts.load_last(folder)
    assert not (folder / artifacts.TEST_FILE).exists()
    if where == "mid-epoch":
        assert state["epoch"] == 0 and state["rng"]["partial"]["steps"] == 2  # epoch 1 stopped after its 2nd step
    else:
        assert state["epoch"] == 1 and "partial" not in state["rng"]
    trials.run(stopped.model_copy(update={"checkpoint": True}))
    a, b = _weights(straight), _weights(stopped)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = io.read_json(folder / "training_dict.json")
    assert len(history["loss"]["total"]) == 3
    assert history["loss"]["total"] == pytest.approx(io.read_json(artifacts.trial_folder(straight, 0) / "training_dict.json")["loss"]["total"])


def test_a_nan_in_training_stops_the_trial_and_the_next_one_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=2, epochs=2, log_every=1000)
    from tasks.depth import DepthTask

    original = DepthTask.loss
    calls = {"n": 0}

    def poisoned(self, pred, target):  # trial 0 diverges at its 8th step (epoch 1), trial 1 trains normally
        calls["n"] += 1
        loss = original(self, pred, target)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(DepthTask, "loss", poisoned)
    rows = trials.run(cfg)
    assert [row["trial"] for row in rows] == [1]
    failed = artifacts.trial_folder(cfg, 0)
    reason = artifacts.failure(failed)
    assert reason is not None and "trial 0, epoch 1, step" in reason and "loss of task depth_euclidean" in reason
    assert (failed / artifacts.GLOBAL_CHECKPOINT).is_file()  # epoch 0's best is kept
    assert ckpt.load(failed / artifacts.GLOBAL_CHECKPOINT)["epoch"] == 0  # the diverged epoch never became a best
    table = pd.read_csv(tmp_path / "out_csv" / "stop_trials.csv")
    assert table.set_index("trial").loc[0, "status"] == "failed" and "non-finite" in table.set_index("trial").loc[0, "reason"]
    summary = pd.read_csv(tmp_path / "out_csv" / "stop.csv")
    assert summary.loc[0, "n_trials"] == 1


def test_a_failed_trial_rerun_with_checkpoint_true_resumes_from_its_last_good_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The rerun says the trial failed before; once the cause is gone it ends as the straight run does."""
    monkeypatch.chdir(tmp_path)
    from tasks.depth import DepthTask

    straight = tiny_config(tmp_path / "a", epochs=2, log_every=1000)
    trials.run(straight)
    cfg = tiny_config(tmp_path / "b", epochs=2, log_every=1000, checkpoint=True)
    original = DepthTask.loss
    calls = {"n": 0}

    def poisoned(self, pred, target):  # the 8th step (epoch 1) diverges
        calls["n"] += 1
        loss = original(self, pred, target)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(DepthTask, "loss", poisoned)
    assert trials.run(cfg) == []
    folder = artifacts.trial_folder(cfg, 0)
    reason = artifacts.failure(folder)
    assert reason is not None and artifacts.load_last(folder)["epoch"] == 0
    monkeypatch.setattr(DepthTask, "loss", original)  # the cause is gone (a fixed data file, say)
    with caplog.at_level(logging.INFO, logger="gsmtl"):
        rows = trials.run(cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert f"trial 0 was marked failed ({reason}); it resumes from its last good last.pt" in "\n".join(messages)
    assert "trial 0 resumes in epoch 1" in messages
    assert [row["trial"] for row in rows] == [0] and artifacts.failure(folder) is None
    a, b = _weights(straight), _weights(cfg)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_nan_target_under_the_validity_mask_names_its_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masked out, a NaN depth pixel leaves the loss finite and poisons only the gradient: the target check names it."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=1, epochs=1, log_every=1000)
    from engine import loop

    original = loop.to_device

    def poisoned(batch, device, channels_last):
        images, targets = original(batch, device, channels_last)
        targets["surface_normal"][0, :, 0, 0] = float("nan")
        return images, targets

    monkeypatch.setattr(loop, "to_device", poisoned)
    assert trials.run(cfg) == []
    reason = artifacts.failure(artifacts.trial_folder(cfg, 0))
    assert reason is not None and "epoch 0, step 0: non-finite values in the target of task surface_normal" in reason


def test_when_every_trial_fails_the_cli_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import main_multi_trials
    from tasks.depth import DepthTask

    monkeypatch.chdir(tmp_path)
    raw = tiny.tiny_raw("doomed", tmp_path / "runs", tmp_path / "nyud", num_trials=2, epochs=1,
                        synthetic={"num_images": 24, "height": 32, "width": 48, "seed": 1})
    (tmp_path / "doomed.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    original = DepthTask.loss
    monkeypatch.setattr(DepthTask, "loss", lambda self, pred, target: original(self, pred, target) * float("inf"))
    assert main_multi_trials.main(["--config_exp", "doomed.yaml"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: no trial of doomed finished; the reasons are in out_csv/doomed_trials.csv"]
    table = pd.read_csv(tmp_path / "out_csv" / "doomed_trials.csv")
    assert table["status"].tolist() == ["failed", "failed"] and table["reason"].str.contains("loss of task depth").all()
    assert pd.read_csv(tmp_path / "out_csv" / "doomed.csv").loc[0, "n_trials"] == 0
    raw["on_trial_failure"] = "stop"
    (tmp_path / "doomed.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    for folder in (tmp_path / "runs").iterdir():
        for file in folder.iterdir():
            file.unlink()
    assert main_multi_trials.main(["--config_exp", "doomed.yaml"]) == 1
    err = capsys.readouterr().err
    faults = [line for line in err.splitlines() if "non-finite loss of task depth_euclidean" in line]
    assert "Traceback" not in err and len(faults) == 1, "the fault is told once, by the command's error line"
    assert faults[0].startswith("error: doomed: trial 0, epoch 0, step ")
    assert faults[0].endswith("trial 0 marked failed, its last good checkpoints kept (on_trial_failure: stop)")


def test_a_sweep_whose_every_trial_fails_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """No λ has a finished trial: no sweep table, figure or best λ is written, and nothing raises past the CLI."""
    import main_multi_trials
    from tasks.depth import DepthTask

    monkeypatch.chdir(tmp_path)
    raw = tiny.tiny_raw("doomed", tmp_path / "runs", tmp_path / "nyud", num_trials=1, epochs=1, lambda_sweep=[1e-3, 1e-2],
                        task_list=["depth_euclidean"], setup="singletask",
                        synthetic={"num_images": 24, "height": 32, "width": 48, "seed": 1})
    (tmp_path / "doomed.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    original = DepthTask.loss
    monkeypatch.setattr(DepthTask, "loss", lambda self, pred, target: original(self, pred, target) * float("inf"))
    assert main_multi_trials.main(["--config_exp", "doomed.yaml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: no trial of doomed finished at any lambda; the reasons are in out_csv/doomed_lambda_<lambda>_trials.csv"]
    assert sorted(path.name for path in (tmp_path / "out_csv").iterdir()) == [
        "doomed_lambda_0.001.csv", "doomed_lambda_0.001_trials.csv", "doomed_lambda_0.01.csv", "doomed_lambda_0.01_trials.csv"]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_cli_stops_on_a_signal_with_one_line_and_resumes(tmp_path: Path, signum: int, code: int) -> None:
    synthetic = {"num_images": 48, "height": 32, "width": 48, "seed": 1}
    raw = tiny.tiny_raw("sig", tmp_path / "runs", tmp_path / "nyud", synthetic=synthetic, num_trials=1, epochs=6)
    path = tmp_path / "sig.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    command = [sys.executable, str(REPO / "main_multi_trials.py"), "--config_exp", str(path)]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    history = tmp_path / "runs" / "sig_trial_0" / "validation_dict.json"
    deadline = time.monotonic() + 240
    while not history.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    line = [text for text in stderr.splitlines() if "resume with" in text]
    assert len(line) == 1 and "--set checkpoint=true" in line[0]
    folder = tmp_path / "runs" / "sig_trial_0"
    assert artifacts.load_last(folder)["epoch"] >= 0 and not list(folder.glob(".*.tmp"))
    resumed = subprocess.run([*command, "--set", "checkpoint=true"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (folder / artifacts.TEST_FILE).is_file()
