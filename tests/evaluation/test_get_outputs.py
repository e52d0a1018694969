"""get_outputs.py: trial discovery, tables with metrics, sparsity and cost, moved data, Δm."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import get_outputs
import tasks as task_registry
from engine import evaluate
from engine.artifacts import default_runs_dirs, find_trials
from utils import config, io, report
from utils.errors import ConfigError, DataError

NAME = "tiny_mtl"  # conftest's experiment


def run(trained, out: Path, *args: str) -> int:
    return get_outputs.main(["--runs_dir", str(trained.runs), "--out_dir", str(out), "--device", "cpu", *args])


@pytest.fixture(scope="module")
def tables(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """(summary, per-trial) tables of the trained experiment, and the folder they were written to."""
    out = tmp_path_factory.mktemp("out_csv")
    assert run(trained, out, "--exp_name", f"{NAME}_", "--columns", "study") == 0
    assert not (out / f"{NAME}.csv").exists()  # the table is named as typed, trailing underscore kept
    return pd.read_csv(out / f"{NAME}_.csv"), pd.read_csv(out / f"{NAME}__trials.csv"), out


def test_tables_hold_every_metric_sparsity_and_cost(trained, tables) -> None:
    summary, per_trial, _ = tables
    assert len(summary) == 1 and per_trial["trial"].tolist() == [0, 1]
    metric_columns = [f"{name}_{metric}" for name, metrics in task_registry.directions(trained.cfg.task_list).items()
                      for metric in metrics]
    cost_columns = ["model_params", "model_size_mb", "gflops", "latency_ms_batch1", "latency_ms_batch8"]
    for column in [*metric_columns, *report.SPARSITY_COLUMNS, *cost_columns]:
        assert per_trial[column].notna().all(), column
        assert " ± " in summary.loc[0, column], column
    assert (per_trial["gflops"] > 0).all() and (per_trial["latency_ms_batch1"] > 0).all()
    assert summary.loc[0, "n_trials"] == 2 and (per_trial["status"] == "finished").all()


def test_study_columns_units_and_order(trained, tables) -> None:
    _, per_trial, out = tables
    study = pd.read_csv(out / f"{NAME}__study.csv")
    assert list(study.columns) == [
        "segmentsemantic_IoU", "depth_euclidean_mae", "depth_euclidean_rmse", "surface_normal_cos_similarity",
        "surface_normal_Angle Mean", "surface_normal_Angle Median", "surface_normal_Angle RMSE", "surface_normal_Angle 11.25",
        "surface_normal_Angle 22.5", "surface_normal_Angle 30", "surface_normal_Angle 45", "gp_spar_value", "param_spar_value",
    ]
    mean = float(study.loc[0, "gp_spar_value"].split(" ± ")[0])
    assert mean == pytest.approx(100 * per_trial["group_sparsity"].mean(), abs=1e-4)  # in %, as the study wrote it
    mse = float(study.loc[0, "depth_euclidean_rmse"].split(" ± ")[0])
    assert mse == pytest.approx((per_trial["depth_euclidean_rmse_norm"] ** 2).mean(), abs=1e-4)  # the study's "rmse" was the MSE


def test_evaluation_reproduces_the_test_numbers_of_training(trained, tables) -> None:
    _, per_trial, _ = tables
    for trial in (0, 1):
        stored = io.read_json(trained.folder(trial) / "test_dict.json")
        for name, metrics in stored["tasks"].items():
            for metric, value in metrics.items():
                assert per_trial.loc[trial, f"{name}_{metric}"] == pytest.approx(value, rel=1e-5, abs=1e-6)
        assert per_trial.loc[trial, "group_sparsity"] == pytest.approx(stored["sparsity"]["group_sparsity"])


def test_both_folder_spellings_and_sub_folders_are_found(tmp_path: Path) -> None:
    for name in ("a_trial_0", "nested/atrial_1", "ab_trial_0", "a_trial_x"):
        (tmp_path / name).mkdir(parents=True)
    assert find_trials("a", runs_dirs=[tmp_path]) == {0: tmp_path / "a_trial_0", 1: tmp_path / "nested" / "atrial_1"}
    assert find_trials("a_", runs_dirs=[tmp_path]) == {0: tmp_path / "a_trial_0"}  # "a_" + "trial_0"
    assert find_trials(str(tmp_path / "a"), runs_dirs=["elsewhere"], num_trials=1) == {0: tmp_path / "a_trial_0"}
    (tmp_path / "atrial_0").mkdir()
    with pytest.raises(DataError, match="several folders"):
        find_trials("a", runs_dirs=[tmp_path])
    with pytest.raises(ConfigError, match="--num_trials 0"):
        find_trials("a", runs_dirs=[tmp_path], num_trials=0)


def test_a_folder_under_two_runs_folders_is_found_once(tmp_path: Path) -> None:
    """runs/ (searched one level deep) and runs/NYU (the study files' checkpoint_folder) both reach runs/NYU/x_trial_0."""
    (tmp_path / "runs" / "NYU" / "x_trial_0").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs" / "NYU")
    expected = {0: tmp_path / "runs" / "NYU" / "x_trial_0"}
    assert find_trials("x", runs_dirs=[tmp_path / "runs", tmp_path / "runs" / "NYU"]) == expected
    assert find_trials("x", runs_dirs=[tmp_path / "runs", tmp_path / "link"]) == expected  # the first path found is kept
    (tmp_path / "runs" / "0_best").symlink_to(tmp_path / "runs" / "NYU" / "x_trial_0")  # an alias sorted first
    assert find_trials("x", runs_dirs=[tmp_path / "runs"]) == expected
    (tmp_path / "runs" / "xtrial_0").mkdir()  # another folder of trial 0: still ambiguous
    with pytest.raises(DataError, match="several folders"):
        find_trials("x", runs_dirs=[tmp_path / "runs", tmp_path / "runs" / "NYU"])


def test_names_ending_in_underscores_are_taken_as_typed(tmp_path: Path) -> None:
    """The study's CelebA file names its experiment '11_1_multi_male_smile_1e5__': folders get a third '_'."""
    for name in ("11_1_multi_male_smile_1e5___trial_0", "11_1_multi_male_smile_1e5___trial_1", "11_1_multi_male_smile_1e5_trial_0"):
        (tmp_path / name).mkdir()
    found = find_trials("11_1_multi_male_smile_1e5__", runs_dirs=[tmp_path])
    assert found == {i: tmp_path / f"11_1_multi_male_smile_1e5___trial_{i}" for i in (0, 1)}
    grid = tmp_path / "GridSearch_8_lambda_1e-07"  # the study's grid search: one folder per λ, no trial suffix
    grid.mkdir()
    (grid / "config_file.yaml").write_text("Experiment_name: x\n")
    assert find_trials("GridSearch_8_lambda_1e-07", runs_dirs=[tmp_path], num_trials=1) == {0: grid}


def test_default_runs_dirs_are_runs_and_the_configs_checkpoint_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "config" / "exp.yaml").write_text("'checkpoint_folder': 'results/runs/'\n")
    (tmp_path / "config" / "other.yaml").write_text("'checkpoint_folder': 'not/there/'\n")
    assert default_runs_dirs() == [(tmp_path / "results" / "runs").resolve()]
    (tmp_path / "runs").mkdir()
    assert default_runs_dirs() == [(tmp_path / "runs").resolve(), (tmp_path / "results" / "runs").resolve()]


def test_an_evaluation_never_overwrites_the_training_table(trained, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{NAME}.csv").write_text("training table\n")
    assert run(trained, out, "--exp_name", NAME, "--num_trials", "1") == 0
    assert (out / f"{NAME}.csv").read_text() == "training table\n"
    assert (out / f"{NAME}_eval.csv").is_file() and (out / f"{NAME}_eval_trials.csv").is_file()


def test_trials_of_different_configs_are_named_in_a_warning(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A trial retrained after a config change is averaged with the others, with a warning naming the keys."""
    runs = tmp_path / "runs"
    shutil.copytree(trained.runs, runs)
    path = runs / trained.folder(1).name / "config_file.yaml"
    io.write_text(path, config.dump(config.load(path).model_copy(update={"epochs": trained.cfg.epochs + 5})))
    assert get_outputs.main(["--runs_dir", str(runs), "--out_dir", str(tmp_path / "out"), "--device", "cpu",
                             "--exp_name", NAME]) == 0
    assert (f"trial 1 of {NAME} was trained with another config than trial 0 (epochs: {trained.cfg.epochs} -> "
            f"{trained.cfg.epochs + 5}); the tables average it with the others") in capsys.readouterr().err


def test_missing_trial_exits_2_naming_it(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(trained, tmp_path, "--exp_name", f"{NAME}_", "--num_trials", "3") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "trial(s) [2]" in error and "found trials [0, 1]" in error
    assert run(trained, tmp_path, "--exp_name", "no_such_exp_") == 2
    assert not list(tmp_path.glob("*.csv"))


def test_a_huge_num_trials_is_counted_not_listed(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--num_trials 10^20 once looped over every index it asked for (a hang)."""
    assert run(trained, tmp_path, "--exp_name", f"{NAME}_", "--num_trials", str(10**20)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{10**20 - 2} trials (the first [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])" in error and "found trials [0, 1]" in error


@pytest.mark.parametrize(("args", "expected"), [
    (["--runs_dir", "{tmp}/nowhere"], "--runs_dir '{tmp}/nowhere': folder not found"),
    (["--out_dir", "{tmp}/blocked"], "'{tmp}/blocked/" + NAME + "_eval_trials.csv' is a folder"),
], ids=["a --runs_dir that does not exist", "a folder in place of a table"])
def test_bad_places_exit_2_before_any_trial_is_tested(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str,
) -> None:
    def not_yet(*args, **kwargs):
        raise AssertionError("a trial was tested before the places were checked")

    monkeypatch.setattr(evaluate, "evaluate_trial", not_yet)
    (tmp_path / "blocked" / f"{NAME}_eval_trials.csv").mkdir(parents=True)
    args = [a.format(tmp=tmp_path) for a in args]
    assert get_outputs.main(["--runs_dir", str(trained.runs), "--out_dir", str(tmp_path / "out"), "--device", "cpu",
                             "--exp_name", NAME, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected.format(tmp=tmp_path) in lines[-1]
    assert not (tmp_path / "out").exists() and not list((tmp_path / "blocked").glob("*.csv.*"))
    assert [p.name for p in (tmp_path / "blocked").iterdir()] == [f"{NAME}_eval_trials.csv"]


def test_moved_data_needs_data_dir(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    moved = trained.data_dir.with_name("nyud_moved")
    trained.data_dir.rename(moved)
    try:
        assert run(trained, tmp_path, "--exp_name", NAME, "--num_trials", "1") == 2
        error = capsys.readouterr().err
        assert str(trained.data_dir) in error and "--data_dir" in error and "Traceback" not in error
        assert not trained.data_dir.exists()  # evaluation never generates data where the config pointed
        assert run(trained, tmp_path, "--exp_name", NAME, "--num_trials", "1", "--data_dir", str(moved)) == 0
    finally:
        moved.rename(trained.data_dir)
    assert pd.read_csv(tmp_path / f"{NAME}_eval_trials.csv")["trial"].tolist() == [0]


def test_delta_m_against_single_task_baselines(trained, tmp_path: Path) -> None:
    base = {"segmentsemantic_mIoU": 0.05, "segmentsemantic_pixel_acc": 0.2, "depth_euclidean_abs_err": 1.5,
            "surface_normal_mean": 40.0, "surface_normal_within_11.25": 10.0}
    # Three single-task experiments, written the two ways the project writes tables.
    pd.DataFrame({"trial": [0, 1], "segmentsemantic_mIoU": [0.04, 0.06], "segmentsemantic_pixel_acc": [0.1, 0.3],
                  "group_sparsity": [0.5, 0.5]}).to_csv(tmp_path / "seg_trials.csv", index=False)
    pd.DataFrame({"depth_euclidean_abs_err": ["1.5123 ± 0.1000"], "group_sparsity": ["0.1 ± 0.0"]}).to_csv(
        tmp_path / "depth.csv", index=False)  # a rounded summary: its _trials.csv beside it is read instead
    pd.DataFrame({"trial": [0, 1], "depth_euclidean_abs_err": [1.4, 1.6]}).to_csv(tmp_path / "depth_trials.csv", index=False)
    pd.DataFrame({"trial": [0], "surface_normal_mean": [40.0], "surface_normal_within_11.25": [10.0]}).to_csv(
        tmp_path / "sn_trials.csv", index=False)
    baselines = [str(tmp_path / n) for n in ("seg_trials.csv", "depth.csv", "sn_trials.csv")]
    assert run(trained, tmp_path, "--exp_name", NAME, "--num_trials", "1", "--baseline", *baselines) == 0

    row = pd.read_csv(tmp_path / f"{NAME}_eval_trials.csv").iloc[0]
    seg = ((row["segmentsemantic_mIoU"] - 0.05) / 0.05 + (row["segmentsemantic_pixel_acc"] - 0.2) / 0.2) / 2 * 100
    depth = (1.5 - row["depth_euclidean_abs_err"]) / 1.5 * 100
    normals = ((40.0 - row["surface_normal_mean"]) / 40.0 + (row["surface_normal_within_11.25"] - 10.0) / 10.0) / 2 * 100
    assert row["delta_m_segmentsemantic"] == pytest.approx(seg)
    assert row["delta_m_depth_euclidean"] == pytest.approx(depth)
    assert row["delta_m_surface_normal"] == pytest.approx(normals)
    assert row["delta_m"] == pytest.approx((seg + depth + normals) / 3)
    assert report.read_baseline(baselines, tasks=trained.cfg.task_list) == pytest.approx(base)


def test_baseline_errors_name_the_file(tmp_path: Path) -> None:
    pd.DataFrame({"seg_mIoU": [0.5]}).to_csv(tmp_path / "a_trials.csv", index=False)
    pd.DataFrame({"seg_mIoU": [0.4]}).to_csv(tmp_path / "b_trials.csv", index=False)
    with pytest.raises(DataError, match="b_trials.csv"):
        report.read_baseline([tmp_path / "a_trials.csv", tmp_path / "b_trials.csv"], tasks=["seg"])
    pd.DataFrame({"seg_mIoU": ["0.5 ± 0.1"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match="c_trials.csv"):
        report.read_baseline([tmp_path / "c.csv"], tasks=["seg"])  # a summary without its numbers beside it
    with pytest.raises(DataError, match="missing.csv"):
        report.read_baseline([tmp_path / "missing.csv"], tasks=["seg"])
    with pytest.raises(DataError, match="no baseline for task 'depth'"):
        report.delta_m({"depth_abs_err": 1.0}, {"seg_mIoU": 0.5}, {"depth": {"abs_err": False}})
    assert report.delta_m({"seg_mIoU": 0.6}, {"seg_mIoU": 0.5}, {"seg": {"mIoU": True}})["delta_m"] == pytest.approx(20.0)


@pytest.mark.parametrize("damage", ["empty", "other_model"])
def test_a_damaged_checkpoint_exits_2_naming_it(trained, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(trained.folder(0), runs / trained.folder(0).name)
    target = runs / trained.folder(0).name / "checkpoint.pt"
    if damage == "empty":
        target.write_bytes(b"")
    else:  # a checkpoint of a wider backbone: every key there, shapes differ
        state = torch.load(target, weights_only=True)
        state["model"] = {key: torch.zeros(2, *value.shape) if value.ndim == 4 else value for key, value in state["model"].items()}
        torch.save(state, target)
    code = get_outputs.main(["--runs_dir", str(runs), "--out_dir", str(tmp_path / "out"), "--device", "cpu",
                             "--exp_name", NAME, "--num_trials", "1"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("error: ") and str(target) in error[-1]
    assert "Traceback" not in "\n".join(error) and not (tmp_path / "out").exists()


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Testing a trial fails the test: what these tests check must be refused before any trial is tested."""
    from engine import evaluate

    def evaluated(*args, **kwargs):
        raise AssertionError("a trial was tested before the bad input was refused")

    monkeypatch.setattr(evaluate, "evaluate_trial", evaluated)


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("error: ")
    return err[-1]


@pytest.mark.parametrize("bad", ["out_dir_is_a_file", "out_dir_under_a_file"])
def test_an_unusable_out_dir_is_refused_before_evaluating(trained, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          no_evaluation, bad: str) -> None:
    (tmp_path / "outf").write_text("")
    out = tmp_path / "outf" if bad == "out_dir_is_a_file" else tmp_path / "outf" / "tables"
    assert run(trained, out, "--exp_name", NAME, "--num_trials", "1") == 2
    error = one_error_line(capsys)
    assert "--out_dir" in error and str(tmp_path / "outf") in error and "expected a folder" in error
    assert (tmp_path / "outf").read_text() == ""


@pytest.mark.parametrize("bad", ["missing", "garbage", "no_task_columns"])
def test_a_bad_baseline_is_refused_before_evaluating(trained, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     no_evaluation, bad: str) -> None:
    path = tmp_path / "base_trials.csv"
    if bad == "garbage":
        path.write_text('a,b\n"x\n')
    elif bad == "no_task_columns":
        pd.DataFrame({"trial": [0], "class_Male_accuracy": [0.9]}).to_csv(path, index=False)
    assert run(trained, tmp_path / "out", "--exp_name", NAME, "--num_trials", "1", "--baseline", str(path)) == 2
    error = one_error_line(capsys)
    assert (str(path) in error) if bad != "no_task_columns" else ("no baseline for task" in error and "--baseline" in error)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_runs_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    (runs / f"{NAME}_trial_0").mkdir(parents=True)
    listing = Path.iterdir

    def iterdir(self: Path):  # chmod 000 as a non-root user (the tests may run as root, whom no mode stops)
        if self == runs:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code = get_outputs.main(["--runs_dir", str(runs), "--out_dir", str(tmp_path / "out"), "--exp_name", NAME])
    error = one_error_line(capsys)
    assert code == 2 and str(runs) in error and "cannot be read" in error
