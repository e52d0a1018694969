"""The study in one command: the study file, its cells, the tables and Δm, resume, and a tiny study end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import tasks as task_registry
from engine import study
from engine.trainer import Interrupted
from tests import tiny
from utils import study_report
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def experiment_keys(tmp: Path, **changes: Any) -> dict[str, Any]:
    """A tiny two-task experiment (depth and normals: their metrics are never 0, so Δm is defined)."""
    raw = tiny.tiny_raw("base", tmp / "runs", tmp / "nyud", **{
        "task_list": ["depth_euclidean", "surface_normal"], "max_batches_per_epoch": 2, "epochs": 1, **changes})
    raw.pop("Experiment_name")
    return raw


def study_keys(tmp: Path, **changes: Any) -> dict[str, Any]:
    return {"study": "s", "experiment": experiment_keys(tmp), "levels": [0, 0.1], "out_dir": str(tmp / "out"), **changes}


def load(tmp: Path, overrides: tuple[str, ...] = (), **changes: Any) -> study.Study:
    return study.load(write_yaml(tmp / "study.yaml", study_keys(tmp, **changes)), overrides)


# ----------------------------------------------------------------------------- the study file and its cells
def test_cells_are_named_grouped_by_setup_and_carry_their_level(tmp_path: Path) -> None:
    plan = load(tmp_path, levels=[0, 1e-5, {"target": 0.7}, {"target": 0.7, "finetune_epochs": 3}],
                setups={"singletask": True, "multitask": True})
    names = [cell.name for cell in plan.cells]
    assert names[:4] == ["s_single_depth_euclidean_dense", "s_single_depth_euclidean_lambda_1e-05",
                         "s_single_depth_euclidean_target_0.7", "s_single_depth_euclidean_target_0.7_ft3"]
    assert names[4].startswith("s_single_surface_normal_") and names[-1] == "s_multi_target_0.7_ft3" and len(names) == 12
    by_name = {cell.name: cell.cfg for cell in plan.cells}
    dense, sparse = by_name["s_multi_dense"], by_name["s_multi_lambda_1e-05"]
    assert (dense.group_sparsity, dense.bb_optimizer_params.lambda_, dense.setup) == (False, 0.0, "multitask")
    assert (sparse.group_sparsity, sparse.bb_optimizer_params.lambda_) == (True, 1e-5)
    target, tuned = by_name["s_single_surface_normal_target_0.7"], by_name["s_single_surface_normal_target_0.7_ft3"]
    assert (target.group_sparsity, target.target_group_sparsity, target.finetune_epochs) == (True, 0.7, 0)
    assert (tuned.target_group_sparsity, tuned.finetune_epochs, tuned.task_list, tuned.setup) == (0.7, 3, ["surface_normal"], "singletask")
    assert plan.folder == tmp_path / "out" / "s" and plan.cells_folder == tmp_path / "out" / "s" / "cells"


def test_experiment_file_set_keys_and_overrides_merge(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    base = {"Experiment_name": "from_file", **experiment_keys(tmp_path), "loss_weights": {"depth_euclidean": 2.0, "surface_normal": 1.0}}
    write_yaml(tmp_path / "exp" / "base.yaml", base)
    path = write_yaml(tmp_path / "exp" / "study.yaml", {
        "study": "s", "experiment": "base.yaml", "set": {"epochs": 3, "bb_optimizer_params": {"learning_rate": 5e-4}},
        "levels": [1e-3], "num_trials": 3, "setups": {"singletask": True, "multitask": False},
    })
    plan = study.load(path, ["bb_optimizer_params.weight_decay=0.5"])
    cfg = plan.cells[0].cfg
    assert (cfg.epochs, cfg.num_trials, cfg.head_channels) == (3, 3, 8)
    assert (cfg.bb_optimizer_params.learning_rate, cfg.bb_optimizer_params.weight_decay, cfg.bb_optimizer_params.lambda_) == (5e-4, 0.5, 1e-3)
    assert cfg.loss_weights == {"depth_euclidean": 2.0}  # a single-task cell keeps its own task's weight
    assert [cell.name for cell in plan.cells] == ["s_single_depth_euclidean_lambda_0.001", "s_single_surface_normal_lambda_0.001"]


def test_subsets_are_extra_multitask_setups(tmp_path: Path) -> None:
    keys = experiment_keys(tmp_path, task_list=["segmentsemantic", "depth_euclidean", "surface_normal"])
    plan = study.load(write_yaml(tmp_path / "study.yaml", {
        "study": "s", "experiment": keys, "levels": [0],
        "setups": {"singletask": False, "subsets": [["surface_normal", "segmentsemantic"]]},
    }))
    assert [(cell.setup, cell.tasks) for cell in plan.cells] == [
        ("multi", ("segmentsemantic", "depth_euclidean", "surface_normal")),
        ("multi_segmentsemantic+surface_normal", ("segmentsemantic", "surface_normal")),
    ]


@pytest.mark.parametrize(("changes", "expected"), [
    ({"levelz": [0]}, "unknown study key 'levelz'"),
    ({"levels": [{"lambda": 1e-3, "target": 0.5}]}, "key 'levels.0': a level is a λ"),
    ({"levels": [-1.0]}, "key 'levels.0.lambda'"),
    ({"levels": [{"target": 1.5}]}, "key 'levels.0.target'"),
    ({"levels": [{"lambda": 0, "finetune_epochs": 2}]}, "fine-tuning needs a sparse level"),
    ({"levels": [1e-3, 0.001]}, "key 'levels': ['lambda_0.001'] listed more than once"),
    ({"levels": []}, "key 'levels'"),
    ({"study": "a/b"}, "key 'study'"),
    ({"setups": {"subsets": [["depth_euclidean", "edge_texture"]]}}, "key 'setups.subsets.0': ['edge_texture'] not in"),
    ({"setups": {"subsets": [["surface_normal", "depth_euclidean"]]}}, "is every task; that is setups.multitask"),
    ({"setups": {"singletask": False, "multitask": False}}, "every setup is off"),
    ({"experiment": "nope.yaml"}, "key 'experiment': file"),
    ({"set": {"epochz": 3}}, "experiment: unknown key 'epochz' (did you mean 'epochs'?)"),
    ({"set": {"lambda_list": [1e-5]}}, "experiment key 'lambda_list'"),
    ({"set": {"target_epoch": 5}}, "experiment: target_epoch: 5 is after the last epoch"),
    ({"set": {"bb_optimizer_params": {"penalty": None}}}, "cell 's_single_depth_euclidean_lambda_0.1': bb_optimizer_params.penalty"),
])
def test_broken_study_files_name_the_key(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, **changes)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_broken_study_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "study.yaml", study_keys(tmp_path, levels=[{"lambda": 1e-3, "finetune_epochs": "ten"}]))
    result = subprocess.run([sys.executable, "-m", "engine.study", "--config", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "levels.0.finetune_epochs" in lines[0]


# ----------------------------------------------------------------------------- tables and Δm on hand-made rows
DIRECTIONS = {"A": {"acc": True, "zero": True}, "B": {"err": False}}
INFO = study_report.StudyInfo(
    name="hand", dataset="NYU", tasks=("A", "B"), backbone="resnetd18", backbone_width=1.0, image_size=(32, 48),
    epochs=1, num_trials=2, seed=0, primary={"A": "acc", "B": "err"}, directions=DIRECTIONS,
)


def cell(setup: str, tasks: tuple[str, ...], lam: float, rows: list[dict[str, float]], **extra: Any) -> study_report.CellResult:
    level = "dense" if lam == 0 else f"lambda_{lam}"
    trial_rows = [{"trial": i, "status": "finished", **row} for i, row in enumerate(rows)]
    return study_report.CellResult(setup=setup, tasks=tasks, level=level, lam=lam, target=None, finetune_epochs=0,
                                   experiment=f"hand_{setup}_{level}", planned_trials=2, rows=trial_rows, **extra)


def hand_cells(**cost: float) -> list[study_report.CellResult]:
    return [
        cell("single_A", ("A",), 0.0, [{"A_acc": 0.5, "A_zero": 0.0, "group_sparsity": 0.0, **cost},
                                        {"A_acc": 0.7, "A_zero": 0.0, "group_sparsity": 0.0, **cost}]),
        cell("single_B", ("B",), 0.0, [{"B_err": 2.0, "group_sparsity": 0.0, **cost}, {"B_err": 2.0, "group_sparsity": 0.0, **cost}]),
        cell("multi", ("A", "B"), 0.0, [{"A_acc": 0.66, "A_zero": 0.1, "B_err": 1.8, "group_sparsity": 0.0, **cost},
                                         {"A_acc": 0.54, "A_zero": 0.1, "B_err": 2.2, "group_sparsity": 0.0, **cost}]),
        cell("multi", ("A", "B"), 1e-3, [{"A_acc": 0.63, "A_zero": 0.1, "B_err": 1.9, "group_sparsity": 0.6},
                                          {"A_acc": 0.63, "A_zero": 0.1, "B_err": 1.9, "group_sparsity": 0.8}]),
    ]


def test_delta_m_is_the_mean_of_per_trial_gains_against_single_task_dense_means() -> None:
    cells = hand_cells()
    base = study_report.baseline(cells, DIRECTIONS)
    assert base.values == {"A_acc": pytest.approx(0.6), "B_err": 2.0} and base.left_out == ("A_zero",)
    table = study_report.results_table(cells, INFO).set_index("experiment")
    dense = table.loc["hand_multi_dense"]
    # trial 0: A +10 %, B +10 %; trial 1: A −10 %, B −10 %
    assert dense["delta_m_mean"] == pytest.approx(0.0, abs=1e-12) and dense["delta_m_std"] == pytest.approx(10.0)
    assert dense["delta_m_A_mean"] == pytest.approx(0.0, abs=1e-12) and dense["delta_m_B_std"] == pytest.approx(10.0)
    sparse = table.loc["hand_multi_lambda_0.001"]  # A +5 %, B +5 %
    assert sparse["delta_m_mean"] == pytest.approx(5.0) and sparse["delta_m_std"] == pytest.approx(0.0, abs=1e-12)
    assert sparse["group_sparsity_mean"] == pytest.approx(0.7) and sparse["group_sparsity_std"] == pytest.approx(0.1)
    assert table.loc["hand_single_A_dense", "A_acc_std"] == pytest.approx(0.1)
    assert pd.isna(table.loc["hand_single_A_dense", "B_err_mean"])  # a task the setup does not train
    assert table.loc["hand_single_B_dense", "delta_m_mean"] == 0.0
    assert list(table.columns[:9]) == ["setup", "kind", "tasks", "level", "family", "lambda", "target", "finetune_epochs", "trials"]
    assert "gflops_compact_mean" not in table  # cost columns only when the rows hold them


def test_no_single_task_dense_cell_means_no_delta_m() -> None:
    table = study_report.results_table(hand_cells()[2:], INFO)
    assert not any(column.startswith("delta_m") for column in table.columns)
    assert "No Δm" in study_report.summary_markdown(table, INFO)


def test_study_outputs_and_summary_from_hand_made_rows(tmp_path: Path) -> None:
    outputs = study_report.write_study(hand_cells(gflops_compact=2.0, params_compact=3e6, latency_compact_ms_batch1=4.0),
                                       INFO, folder=tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == {"results.csv", "metrics_all.csv", "summary.md", "vs_sparsity.png",
                                                          "vs_gflops_compact.png"}
    table = pd.read_csv(outputs.results)
    assert {"gflops_compact_mean", "params_compact_std", "latency_compact_ms_batch1_mean"} <= set(table.columns)
    assert "A_zero_mean" in pd.read_csv(outputs.metrics).columns  # every metric, not only the primary ones
    summary = outputs.summary.read_text(encoding="utf-8")
    assert "**A** (acc, higher is better): best 0.6300 ± 0.0000 by the multitask model at λ = 0.001 (70.0 ± 10.0 % group sparsity)" in summary
    assert "dense, Δm = +0.00 ± 10.00 % (A +0.00 %, B +0.00 %)" in summary
    assert ("best Δm = +5.00 ± 0.00 % (λ = 0.001, 70.0 ± 10.0 % group sparsity; within one std of dense over trials, "
            "so not a clear difference)") in summary  # dense's trials spread by ±10 %
    assert "(Δm ≥ 0) is λ = 0.001, 70.0 ± 10.0 % group sparsity, Δm = +5.00 ± 0.00 %" in summary
    assert "Left out of Δm (baseline mean 0 or undefined): A_zero." in summary
    assert "| multitask | λ = 0.001 | 2/2 | 70.0 ± 10.0 | 0.6300 ± 0.0000 | 1.9000 ± 0.0000 | +5.00 ± 0.00 |" in summary
    assert "the 2 single-task dense models together need 4.000 GFLOPs" in summary
    assert "![vs_gflops_compact.png](vs_gflops_compact.png)" in summary


# ----------------------------------------------------------------------------- end to end


def own_delta_m(trials_csv: Path, baselines: dict[str, float], tasks: list[str]) -> pd.DataFrame:
    """Δm per trial from a cell's trials CSV, written out from REFERENCE §6 (not through utils.report)."""
    directions = task_registry.directions(tasks)
    rows = pd.read_csv(trials_csv)
    rows = rows[rows["status"] == "finished"]
    gains = {}
    for task in tasks:
        terms = [(rows[f"{task}_{m}"] - baselines[f"{task}_{m}"]) / baselines[f"{task}_{m}"] * 100 * (1 if higher else -1)
                 for m, higher in directions[task].items() if f"{task}_{m}" in baselines]
        gains[f"delta_m_{task}"] = sum(terms) / len(terms)
    frame = pd.DataFrame(gains)
    frame["delta_m"] = frame.mean(axis=1)
    return frame


@pytest.mark.slow
def test_study_end_to_end_resumes_and_delta_m_matches_the_trial_csvs(tmp_path: Path, one_thread: None) -> None:
    from data.synthetic import make_nyud

    make_nyud(tmp_path / "nyud", num_images=16, height=32, width=48, seed=3)
    path = write_yaml(tmp_path / "study.yaml", study_keys(tmp_path))
    plan = study.load(path)
    assert len(plan.cells) == 6
    runs, out, cells = tmp_path / "runs", plan.folder, plan.cells_folder

    # A killed study: stopped during the second cell's first trial.
    second = runs / f"{plan.cells[1].name}_trial_0"
    with pytest.raises(Interrupted):
        study.run(plan, stop=lambda: "SIGTERM" if second.is_dir() else None)
    first_cell = sorted(runs.glob(f"{plan.cells[0].name}_trial_*/*checkpoint.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in first_cell}
    assert len(stamps) == 2 and not (out / "results.csv").exists()

    assert study.main(["--config", str(path)]) == 0  # the rerun: the first cell is not trained again
    assert {p: p.stat().st_mtime_ns for p in first_cell} == stamps
    tables = ["results.csv", "metrics_all.csv", "summary.md"]
    written = {name: (out / name).read_bytes() for name in tables}
    assert (out / "vs_sparsity.png").stat().st_size > 10_000
    for c in plan.cells:
        assert (cells / f"{c.name}.csv").is_file() and (cells / f"{c.name}_trials.csv").is_file()

    table = pd.read_csv(out / "results.csv")
    assert list(zip(table["setup"], table["level"])) == [
        ("single_depth_euclidean", "dense"), ("single_depth_euclidean", "lambda_0.1"), ("single_surface_normal", "dense"),
        ("single_surface_normal", "lambda_0.1"), ("multi", "dense"), ("multi", "lambda_0.1")]
    assert (table["trials"] == 2).all() and table["group_sparsity_mean"].iloc[1] > 0 == table["group_sparsity_mean"].iloc[0]

    tasks = ["depth_euclidean", "surface_normal"]
    baselines: dict[str, float] = {}
    for task in tasks:
        rows = pd.read_csv(cells / f"s_single_{task}_dense_trials.csv")
        baselines |= {c: rows[c].mean() for c in rows.columns if c.startswith(f"{task}_") and rows[c].mean() != 0}
    for level in ("dense", "lambda_0.1"):
        expected = own_delta_m(cells / f"s_multi_{level}_trials.csv", baselines, tasks)
        row = table[(table["setup"] == "multi") & (table["level"] == level)].iloc[0]
        for column in ("delta_m", "delta_m_depth_euclidean", "delta_m_surface_normal"):
            assert row[f"{column}_mean"] == pytest.approx(expected[column].mean(), rel=1e-9, abs=1e-9), (level, column)
            assert row[f"{column}_std"] == pytest.approx(expected[column].std(ddof=0), rel=1e-9, abs=1e-9), (level, column)

    summary = written["summary.md"].decode("utf-8")
    assert "## Results" in summary and "**multitask vs single-task**" in summary and "![vs_sparsity.png]" in summary

    checkpoints = sorted(runs.glob("*_trial_*/*checkpoint.pt"))
    assert len(checkpoints) == 6 * 2 + 2 * 2 * 2  # a multitask trial also keeps each of its two tasks' best
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    assert study.main(["--config", str(path)]) == 0  # a finished study trains nothing and rewrites the same tables
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == stamps
    assert {name: (out / name).read_bytes() for name in tables} == written


@pytest.mark.slow
def test_a_study_through_submitit_jobs_gives_the_sequential_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  one_thread: None) -> None:
    """Every trial of every cell as a local job: the same results.csv as the sequential study; the cells' tables
    go to the study's folder (not to the working folder's out_csv/); a rerun submits nothing."""
    from data.synthetic import make_nyud

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs compute with one thread, as this process does
    monkeypatch.chdir(tmp_path)
    make_nyud(tmp_path / "nyud", num_images=16, height=32, width=48, seed=3)
    tables = {}
    for mode in ("sequential", "jobs"):
        keys = study_keys(tmp_path / mode, levels=[0.1], experiment=experiment_keys(
            tmp_path / mode, num_trials=1, data_dir_NYU=str(tmp_path / "nyud")))
        path = write_yaml(tmp_path / f"{mode}.yaml", keys)
        flags = ["--launcher", "submitit", "--submitit_folder", str(tmp_path / "submitit")] if mode == "jobs" else []
        assert study.main(["--config", str(path), *flags]) == 0
        tables[mode] = pd.read_csv(Path(keys["out_dir"]) / "s" / "results.csv")
    assert not (tmp_path / "out_csv").exists()
    assert len(list((tmp_path / "submitit").glob("*/*_result.pkl"))) == 3  # 3 cells (2 single-task, 1 multitask) x 1 trial
    pd.testing.assert_frame_equal(tables["sequential"], tables["jobs"], check_exact=False, rtol=1e-9)
    assert study.main(["--config", str(tmp_path / "jobs.yaml"), "--launcher", "submitit",
                       "--submitit_folder", str(tmp_path / "submitit")]) == 0
    assert len(list((tmp_path / "submitit").glob("*/*_result.pkl"))) == 3
