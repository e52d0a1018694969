"""End to end on a tiny synthetic dataset: trial folders, tables, one backbone pass, exact resume."""

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

import data
from engine import artifacts, trials
from engine.artifacts import LAST_CHECKPOINT
from engine.trial import resolve
from tests import tiny
from utils import checkpoint as ckpt
from utils import config, io
from utils.errors import DataError


def tiny_config(tmp: Path, **changes) -> config.ExperimentConfig:
    synthetic = {"num_images": 24, "height": 32, "width": 48, "seed": 1}
    return config.validate(tiny.tiny_raw("tiny", tmp / "runs", tmp / "nyud", **{"synthetic": synthetic, **changes}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[config.ExperimentConfig, Path, list]:
    tmp = tmp_path_factory.mktemp("trials")
    cfg = tiny_config(tmp)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # the tables go to ./out_csv
        rows = trials.run(cfg)
    return cfg, tmp / "out_csv", rows


def test_trial_folders_hold_the_studys_files(finished) -> None:
    cfg, _, _ = finished
    for i in range(2):
        folder = artifacts.trial_folder(cfg, i)
        names = {p.name for p in folder.iterdir()}
        assert {"config_file.yaml", "checkpoint.pt", "last.pt", "training_dict.json", "validation_dict.json",
                "test_dict.json", "sparsity_layers.csv"} <= names
        assert config.load(folder / "config_file.yaml").num_seg_classes == 40
        history = io.read_json(folder / "validation_dict.json")
        assert len(history["loss"]["total"]) == 2
        assert set(history["metric"]) == set(cfg.task_list)


def test_tables_have_mean_std_and_per_trial_rows(finished) -> None:
    _, out, rows = finished
    summary = pd.read_csv(out / "tiny.csv")
    per_trial = pd.read_csv(out / "tiny_trials.csv")
    assert len(summary) == 1 and len(per_trial) == 2 and len(rows) == 2
    for column in ("segmentsemantic_mIoU", "depth_euclidean_abs_err", "surface_normal_mean", "group_sparsity"):
        assert " ± " in summary.loc[0, column]
        assert per_trial[column].notna().all()


def test_finished_trial_is_not_trained_again(finished, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, out, _ = finished
    monkeypatch.chdir(out.parent)
    stamp = (artifacts.trial_folder(cfg, 0) / "checkpoint.pt").stat().st_mtime_ns
    trials.run(cfg, trial=0)
    assert (artifacts.trial_folder(cfg, 0) / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_backbone_runs_once_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=1, epochs=1)
    training_calls = []
    original = models.build

    def counting_build(c, heads):
        model = original(c, heads)
        model.backbone.register_forward_hook(lambda module, *_: training_calls.append(1) if module.training else None)
        return model

    monkeypatch.setattr(models, "build", counting_build)
    trials.run(cfg)
    splits = data.build(resolve(cfg))
    assert len(training_calls) == len(splits.train) // cfg.train_batch_size  # three tasks, one pass


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.chdir(tmp_path)
    straight = tiny_config(tmp_path / "a", num_trials=1, epochs=3, augmentation=True, num_workers=workers)
    trials.run(straight)
    interrupted = tiny_config(tmp_path / "b", num_trials=1, epochs=2, augmentation=True, num_workers=workers)
    trials.run(interrupted)
    (artifacts.trial_folder(interrupted, 0) / "test_dict.json").unlink()
    resumed = tiny_config(tmp_path / "b", num_trials=1, epochs=3, augmentation=True, checkpoint=True, num_workers=workers)
    trials.run(resumed)
    a = ckpt.load(artifacts.trial_folder(straight, 0) / LAST_CHECKPOINT)
    b = ckpt.load(artifacts.trial_folder(resumed, 0) / LAST_CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_changed_config_never_resumes_or_reuses_an_old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    strong = {"learning_rate": 1e-2, "penalty": "l1_l2", "lambda": 1.0}
    sparse = tiny_config(tmp_path, num_trials=1, epochs=1, bb_optimizer_params=strong)
    first = trials.run(sparse)
    dense = tiny_config(tmp_path, num_trials=1, epochs=1, checkpoint=True, group_sparsity=False, bb_optimizer_params=strong)
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        second = trials.run(dense)
    assert first[0]["group_sparsity"] > 0 and second[0]["group_sparsity"] == 0
    assert config.load(artifacts.trial_folder(dense, 0) / "config_file.yaml").group_sparsity is False
    replaced = [r.getMessage() for r in caplog.records if "of another config" in r.getMessage()]
    assert len(replaced) == 1 and "holds a finished run of another config (group_sparsity: True -> False)" in replaced[0]


def test_a_stopped_run_that_checkpoint_false_does_not_resume_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=1, epochs=1)
    trials.run(cfg)
    (artifacts.trial_folder(cfg, 0) / artifacts.TEST_FILE).unlink()  # as if stopped: last.pt, no test results
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        trials.run(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"holds a stopped run's {LAST_CHECKPOINT}; with checkpoint: false trial 0 trains from scratch "
               "(--set checkpoint=true resumes it)" in message for message in warned), warned
    (artifacts.trial_folder(cfg, 0) / artifacts.TEST_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        trials.run(tiny_config(tmp_path, num_trials=1, epochs=2))  # more epochs: what a resume may change
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holds a stopped run of another config (epochs: 1 -> 2); training trial 0 from scratch replaces it "
               "(--set checkpoint=true resumes it)" in message for message in warned), warned


def test_a_finished_run_that_checkpoint_true_would_extend_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """More epochs and checkpoint: false train from scratch; the warning says checkpoint=true extends the run."""
    monkeypatch.chdir(tmp_path)
    trials.run(tiny_config(tmp_path, num_trials=1, epochs=1))
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        trials.run(tiny_config(tmp_path, num_trials=1, epochs=2))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holds a finished run of another config (epochs: 1 -> 2); training trial 0 from scratch replaces it "
               "(--set checkpoint=true resumes it)" in message for message in warned), warned


def test_a_config_file_that_no_longer_validates_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=1, epochs=1, checkpoint=True)
    trials.run(cfg)
    stored = artifacts.trial_folder(cfg, 0) / artifacts.CONFIG_FILE
    stored.write_text(stored.read_text(encoding="utf-8").replace("epochs: 1", "epochs: -1"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        trials.run(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("the folder is not reused" in message for message in warned) == 1, warned
    assert any("holds a finished run of another config (a config it cannot read)" in message for message in warned), warned
    assert config.load(stored).epochs == 1  # trained again, and its config written anew


def test_resuming_a_stopped_run_trains_no_further(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, num_trials=1, epochs=2)
    trials.run(cfg)
    folder = artifacts.trial_folder(cfg, 0)
    state = ckpt.load(folder / LAST_CHECKPOINT)
    state["stopping"]["total"]["stopped"] = True  # as if the run died while testing after its early stop
    ckpt.save(state, folder / LAST_CHECKPOINT)
    (folder / "test_dict.json").unlink()
    trials.run(tiny_config(tmp_path, num_trials=1, epochs=4, checkpoint=True))
    assert len(io.read_json(folder / "validation_dict.json")["loss"]["total"]) == 2
    assert (folder / "test_dict.json").is_file()


@pytest.mark.parametrize(("name", "content", "expected"), [
    (artifacts.TEST_FILE, "{}", "is not a trial's test results"),
    (artifacts.TEST_FILE, "[1]", "is not a trial's test results"),
    (artifacts.FAILURE_FILE, "[]", "holds a list; expected the record of a failed trial"),
])
def test_a_damaged_trial_record_names_its_file(tmp_path: Path, name: str, content: str, expected: str) -> None:
    folder = tmp_path / "t_trial_0"
    folder.mkdir()
    (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected) as error:
        artifacts.read_result(folder) if name == artifacts.TEST_FILE else artifacts.failure(folder)
    assert str(folder / name) in str(error.value)


def test_a_last_pt_of_the_right_keys_but_wrong_parts_names_itself(tmp_path: Path) -> None:
    ckpt.save(dict.fromkeys(artifacts.LAST_PARTS, 0), tmp_path / LAST_CHECKPOINT)
    with pytest.raises(DataError, match=r"last.pt': \['model', 'optimizer'.*are not what a trial saves"):
        artifacts.load_last(tmp_path)


def test_a_folder_where_a_trial_file_belongs_is_one_line(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    folder = artifacts.trial_folder(cfg, 0)
    (folder / artifacts.GLOBAL_CHECKPOINT).mkdir(parents=True)
    with pytest.raises(DataError, match=r"cannot prepare .*checkpoint.pt"):
        artifacts.open_folder(folder, cfg, resume=False)


def test_a_training_split_of_one_sample_is_one_line_before_any_trial_folder(tmp_path: Path) -> None:
    cfg = resolve(tiny_config(tmp_path))
    splits = data.build(cfg)
    one = data.Splits(torch.utils.data.Subset(splits.train, [0]), splits.val, splits.test)
    with pytest.raises(DataError, match="the training split holds 1 sample"):
        trials.run(cfg, splits=one)
    assert not artifacts.trial_folder(cfg, 0).exists()
