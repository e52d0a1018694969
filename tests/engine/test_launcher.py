"""Many trials at once through submitit's local executor: the same tables as a sequential run; a requeued job resumes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import main_multi_trials
from data import nyud, preflight
from data.datasets import _split_keys
from data.synthetic import make_nyud
from engine import artifacts, launcher
from tests import tiny
from utils import config


def sweep_file(tmp: Path, data_dir: Path) -> Path:
    synthetic = {"num_images": 16, "height": 32, "width": 48, "seed": 2}
    raw = tiny.tiny_raw("grid", tmp / "runs", data_dir, synthetic=synthetic, task_list=["depth_euclidean", "surface_normal"],
                        num_trials=2, epochs=2, max_batches_per_epoch=2, lambda_sweep=[1e-3, 1e-2])
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_local_submitit_sweep_gives_the_sequential_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the jobs import the project from any working folder
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs compute with one thread, as this process does (fixture)
    data_dir = tmp_path / "nyud"
    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    for folder in (sequential, parallel):
        folder.mkdir()
    monkeypatch.chdir(sequential)
    assert main_multi_trials.main(["--config_exp", str(sweep_file(sequential, data_dir))]) == 0
    monkeypatch.chdir(parallel)
    code = main_multi_trials.main(["--config_exp", str(sweep_file(parallel, data_dir)), "--launcher", "submitit",
                                   "--cluster", "local", "--submitit_folder", str(parallel / "jobs")])
    assert code == 0
    assert len(list((parallel / "jobs").glob("*/*_result.pkl"))) == 4  # 2 λ x 2 trials, one job each
    for name in ("grid_lambda_0.001_trials.csv", "grid_lambda_0.01_trials.csv", "grid_sweep.csv"):
        a = pd.read_csv(sequential / "out_csv" / name)
        b = pd.read_csv(parallel / "out_csv" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)


def trial_process(root: int) -> int:
    """The process running the job's trial, below the local executor's shell (setup lines) and controller."""
    while True:
        for pid in map(int, Path(f"/proc/{root}/task/{root}/children").read_text().split()):
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
            root = pid
            break
        else:
            time.sleep(0.1)  # not started yet


@pytest.mark.slow
def test_a_requeued_job_resumes_its_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-empted job (SIGUSR2, as Slurm signals it) is requeued by submitit and goes on from last.pt."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    synthetic = {"num_images": 16, "height": 32, "width": 48, "seed": 2}
    cfg = config.validate(tiny.tiny_raw("requeue", tmp_path / "runs", tmp_path / "nyud", synthetic=synthetic, num_trials=1,
                                        epochs=40, max_batches_per_epoch=1, task_list=["depth_euclidean"], setup="singletask"))
    executor = launcher.executor("requeue", launcher.LaunchOptions(folder=tmp_path / "jobs", timeout_min=30))
    job = executor.submit(launcher.TrialJob(), config.to_dict(cfg), 0)
    history = artifacts.trial_folder(cfg, 0) / artifacts.LAST_CHECKPOINT
    while not history.exists() and not job.done():
        time.sleep(0.1)
    os.kill(trial_process(job._process.pid), signal.SIGUSR2)  # what Slurm sends a job it pre-empts (submitit: checkpoint and requeue)
    job.result()
    folder = artifacts.trial_folder(cfg, 0)
    assert (folder / artifacts.TEST_FILE).is_file()
    log = "".join(path.read_text() for path in (tmp_path / "jobs").glob("*/*_log.*"))
    assert "resumes in epoch" in log and "Requeued" in log


def broken_nyud(root: Path) -> Path:
    """A NYUD_MT folder whose split files list images that are not there."""
    (root / "gt_sets").mkdir(parents=True)
    for name in ("images", "depth"):
        (root / name).mkdir()
    for split, ids in (("train", "0001\n0002\n"), ("val", "0003\n")):
        (root / "gt_sets" / f"{split}.txt").write_text(ids, encoding="utf-8")
    return root


def experiment_file(tmp: Path, name: str, data_dir: Path) -> Path:
    """A 2-trial single-task experiment on the NYUD_MT folder ``data_dir`` (no synthetic key)."""
    raw = tiny.tiny_raw(name, tmp / "runs", data_dir, num_trials=2, epochs=1, task_list=["depth_euclidean"], setup="singletask")
    raw.pop("synthetic", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_broken_data_folder_fails_before_anything_is_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The pre-flight runs once, here: one line and exit code 2, no job submitted (not one failure per job)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher, "executor", lambda *args: pytest.fail("a job was submitted"))
    path = experiment_file(tmp_path, "broken", broken_nyud(tmp_path / "broken"))
    code = main_multi_trials.main(["--config_exp", str(path), "--launcher", "submitit", "--submitit_folder", "jobs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "0001.jpg: file not found" in err[-1]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_failed_jobs_are_one_line_naming_the_first_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A job that raises (here: a depth file that the pre-flight does not sample, unreadable when the
    job's cache decodes it) ends the command with exit code 1 and the job's exception on one line."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "nyud"
    make_nyud(data_dir, num_images=16, height=32, width=48, seed=2)
    keys = _split_keys(nyud, data_dir, meta=False)["train"]
    broken = next(key for key in keys if key not in preflight.sample(keys))
    (data_dir / "depth" / f"{broken}.npy").write_bytes(b"not an array")
    path = experiment_file(tmp_path, "broken", data_dir)
    code = main_multi_trials.main(["--config_exp", str(path), "--launcher", "submitit", "--submitit_folder", "jobs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: 2 of 2 job(s) failed, first broken trial 0 (job ")
    assert f"BadFile: {data_dir / 'depth' / broken}.npy: " in err[-1] and "jobs/<job id>/" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert len(list((tmp_path / "jobs").iterdir())) == 2, "one folder per job, no empty '%j' of the local controller"


@pytest.mark.parametrize(("jobs", "code", "line"), [
    (None, 0, "submitted; when the jobs have ended, collect the tables with: python get_outputs.py --exp_name outcome "
              "(or run this command again: it submits only the trials that did not finish)"),
    ([], 1, "error: no trial of outcome finished; the reasons are in out_csv/outcome_trials.csv"),
    (["outcome trial 1 (job 7): DataError: boom"], 1,
     "error: 1 of 2 job(s) failed, first outcome trial 1 (job 7): DataError: boom; every job's logs are in jobs/<job id>/; "
     "rerun the command to resubmit the unfinished trials"),
], ids=["no_wait", "none_finished", "a_job_failed"])
def test_what_the_jobs_returned_decides_the_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], jobs, code: int, line: str) -> None:
    """run_jobs' answer (not waited for / all ended / failures) maps to the command's last line and exit code."""
    monkeypatch.chdir(tmp_path)
    submitted: list[list[tuple]] = []

    def fake_run_jobs(work, options, *, name, out_dir="out_csv"):
        submitted.append(list(work))
        return jobs

    monkeypatch.setattr(launcher, "run_jobs", fake_run_jobs)
    raw = tiny.tiny_raw("outcome", tmp_path / "runs", tmp_path / "nyud", synthetic={"num_images": 16, "height": 32, "width": 48})
    (tmp_path / "outcome.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    flags = ["--launcher", "submitit", "--submitit_folder", "jobs", *(["--no_wait"] if jobs is None else [])]
    assert main_multi_trials.main(["--config_exp", "outcome.yaml", *flags]) == code
    captured = capsys.readouterr()
    assert (captured.out if code == 0 else captured.err).strip().splitlines()[-1] == line
    assert [index for _, index in submitted[0]] == [0, 1]  # nothing finished: both trials submitted


def test_no_wait_with_every_trial_finished_prints_the_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing to submit: the command says so and prints the finished tables, not 'submitted'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher, "executor", lambda *args: pytest.fail("a job was submitted"))
    raw = tiny.tiny_raw("done", tmp_path / "runs", tmp_path / "nyud", synthetic={"num_images": 16, "height": 32, "width": 48},
                        num_trials=2, epochs=1, task_list=["depth_euclidean"], setup="singletask")
    (tmp_path / "done.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main_multi_trials.main(["--config_exp", "done.yaml"]) == 0
    capsys.readouterr()
    assert main_multi_trials.main(["--config_exp", "done.yaml", "--launcher", "submitit", "--no_wait"]) == 0
    captured = capsys.readouterr()
    assert "submitted" not in captured.out and "2 of 2 trial(s) finished before; not submitted again" in captured.err
    assert captured.out.strip().splitlines()[0] == "done"  # the summary table follows the experiment's name
