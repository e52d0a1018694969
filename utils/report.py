"""Result tables: per-trial numbers, the study's one-row ``"mean ± std"`` summary, Δm against baselines.

``<name>_trials.csv`` holds the numbers (one row per trial, failed trials marked with their
reason); ``<name>.csv`` the study's summary: ``"mean ± std"`` (population std) over the finished
trials, with ``n_trials`` saying how many. ``<name>_study.csv`` (``get_outputs.py --columns
study``) repeats the summary in the study's own column names, units and order (REFERENCE §10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from utils.errors import DataError
from utils.io import write_text

#: Which sparsity measures go into the tables, in this order, and their table names: the counts are
#: of the penalised weights only, so they are named so beside the whole compact model's ``params_compact``.
_SPARSITY_NAMES = MappingProxyType({
    "group_sparsity": "group_sparsity", "filter_sparsity": "filter_sparsity", "param_sparsity": "param_sparsity",
    "nonzero_params": "penalised_nonzero_params", "total_params": "penalised_params",
})
SPARSITY_COLUMNS = tuple(_SPARSITY_NAMES.values())
#: Columns that describe a trial rather than measure it.
META_COLUMNS = ("trial", "status", "reason")

#: The study's column name of each of our metrics, per task kind (REFERENCE §10); ``(name, scale, power)``.
_STUDY_METRICS: Mapping[str, tuple[tuple[str, str, float, int], ...]] = MappingProxyType({
    "segmentsemantic": (("IoU", "mIoU_imagewise", 1.0, 1),),
    "surface_normal": (
        ("cos_similarity", "cos_sim", 1.0, 1), ("Angle Mean", "mean", 1.0, 1), ("Angle Median", "median", 1.0, 1),
        ("Angle RMSE", "rmse", 1.0, 1), ("Angle 11.25", "within_11.25", 1.0, 1), ("Angle 22.5", "within_22.5", 1.0, 1),
        ("Angle 30", "within_30", 1.0, 1), ("Angle 45", "within_45", 1.0, 1),
    ),
    # The study's depth error was on depth over its per-image maximum, and its "rmse" was the MSE.
    "depth_euclidean": (("mae", "abs_err_norm", 1.0, 1), ("rmse", "rmse_norm", 1.0, 2)),
    "edge_texture": (("abs_err", "abs_err", 1.0, 1),),
    "class_": (("accuracy", "accuracy", 1.0, 1), ("F1", "f1_weighted", 1.0, 1)),
})


def study_metric_names(task: str) -> list[str]:
    """The study's names of the metrics of ``task`` (``segmentsemantic`` -> ``["IoU"]``), its history's keys."""
    kind = "class_" if task.startswith("class_") else task
    return [study for study, _, _, _ in _STUDY_METRICS.get(kind, ())]


def trial_row(test_dict: Mapping[str, Any], *, trial: int) -> dict[str, Any]:
    """One flat row of a trial's ``test_dict.json``: ``<task>_<metric>`` plus sparsity and cost columns."""
    row: dict[str, Any] = {"trial": trial, "status": "finished"}
    for task, metrics in test_dict["tasks"].items():
        for metric, value in metrics.items():
            row[f"{task}_{metric}"] = value
    measures = test_dict.get("sparsity", {})
    heads = {k: k for k in sorted(measures) if k.startswith("head_input_sparsity_")}
    for key, column in {**_SPARSITY_NAMES, **heads}.items():
        if key in measures:
            row[column] = measures[key]
    for key, value in test_dict.get("extra", {}).items():
        row[key] = value
    return row


def finished(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The numeric columns of the finished trials' rows."""
    table = pd.DataFrame([row for row in rows if row.get("status", "finished") == "finished"])
    return table.drop(columns=[c for c in META_COLUMNS if c in table], errors="ignore").astype(float)


def mean_pm_std(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row of ``"mean ± std"`` strings (population std over the finished trials) and ``n_trials``."""
    numbers = finished(rows)
    if numbers.empty:  # every trial failed: the table says so
        return pd.DataFrame([{"n_trials": 0}])
    stats = numbers.agg(["mean", lambda column: column.std(ddof=0)])
    cells = {column: f"{stats.at['mean', column]:.4f} ± {stats.iloc[1][column]:.4f}" for column in numbers.columns}
    return pd.DataFrame([{**cells, "n_trials": len(numbers)}])


def write_tables(rows: Sequence[Mapping[str, Any]], *, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (summary of the finished trials) and ``<name>_trials.csv`` (every trial) atomically."""
    out_dir = Path(out_dir)
    trials = pd.DataFrame(list(rows)).sort_values("trial").reset_index(drop=True)
    summary_path = write_text(out_dir / f"{name}.csv", mean_pm_std(rows).to_csv(index=False))
    trials_path = write_text(out_dir / f"{name}_trials.csv", trials.to_csv(index=False))
    return summary_path, trials_path


def study_table(rows: Sequence[Mapping[str, Any]], *, tasks: Sequence[str], dataset: str) -> pd.DataFrame:
    """The summary in the study's columns: ``<task>_<study metric>``, then ``gp_spar_value`` and ``param_spar_value`` in %.

    The study's NYU scripts counted zero input-channel groups (our group and parameter sparsity);
    its CelebA script counted zero output filters (our filter sparsity). Tasks in ``tasks`` order.
    """
    numbers = finished(rows)
    columns: dict[str, pd.Series] = {}
    for task in tasks:
        for study_name, ours, scale, power in _STUDY_METRICS["class_" if task.startswith("class_") else task]:
            column = f"{task}_{ours}"
            if column in numbers:
                columns[f"{task}_{study_name}"] = scale * numbers[column] ** power
    group = "filter_sparsity" if dataset == "celebA" else "group_sparsity"
    for study_name, ours in (("gp_spar_value", group), ("param_spar_value", "param_sparsity")):
        if ours in numbers:
            columns[study_name] = 100.0 * numbers[ours]
    return mean_pm_std(pd.DataFrame(columns).assign(status="finished").to_dict("records")).drop(columns=["n_trials"])


def write_study_table(rows: Sequence[Mapping[str, Any]], *, out_dir: str | Path, name: str, tasks: Sequence[str], dataset: str) -> Path:
    """Write ``<name>_study.csv``: :func:`study_table` as the study's ``get_outputs.py`` wrote it."""
    return write_text(Path(out_dir) / f"{name}_study.csv", study_table(rows, tasks=tasks, dataset=dataset).to_csv(index=False))


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a two-column text table (metric, mean ± std) for the console."""
    summary = mean_pm_std(rows)
    count = int(summary.pop("n_trials").iloc[0])
    table = summary.T.reset_index()
    table.columns = ["metric", f"mean ± std over {count} trial(s)"]
    return table.to_string(index=False)


def read_baseline(paths: Sequence[str | Path], *, tasks: Sequence[str]) -> dict[str, float]:
    """Mean over the finished trials of every ``<task>_<metric>`` column of ``tasks`` in single-task tables.

    Each path is a ``<name>_trials.csv`` (or the summary ``<name>.csv`` beside one, whose
    ``_trials.csv`` is then read: the numbers, not the rounded "mean ± std" strings). A task
    column found in two files is ambiguous and refused.
    """
    prefixes = tuple(f"{task}_" for task in tasks)
    baseline: dict[str, float] = {}
    source: dict[str, Path] = {}
    for path in map(_trials_table, map(Path, paths)):
        numbers = finished(_read_csv(path).to_dict("records"))
        for column in numbers.columns:
            if not str(column).startswith(prefixes):
                continue
            if column in source:
                raise DataError(f"baseline column '{column}' is in both '{source[column]}' and '{path}'; pass one of them")
            baseline[str(column)], source[column] = float(numbers[column].mean()), path
    return baseline


def _trials_table(path: Path) -> Path:
    if path.name.endswith("_trials.csv"):
        return path
    sibling = path.with_name(f"{path.stem}_trials.csv")
    if not sibling.is_file():
        raise DataError(f"baseline '{path}': expected a <name>_trials.csv written by get_outputs.py or main_multi_trials.py "
                        f"(no '{sibling.name}' beside it)")
    return sibling


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"baseline file '{path}' not found; expected a CSV written by get_outputs.py or main_multi_trials.py")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"baseline file '{path}' is not a readable CSV ({str(error).splitlines()[0]})") from None


def delta_m(
    row: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, Mapping[str, bool]],
) -> dict[str, float]:
    """Multi-task gain over single-task baselines, in %, overall and per task (REFERENCE §6).

    Δm = (1/T) Σ_t (1/M_t) Σ_m (−1)^{h_m} (M_b − M)/M_b · 100, h_m = 1 where higher is better,
    so a positive Δm is better than the baselines (Maninis et al. 2019; LibMTL's definition).
    Every metric of a task present in both ``row`` and ``baseline`` counts, except undefined
    (NaN) values, such as AUROC on a split with one class.

    Args:
        row: ``<task>_<metric>`` values of the model (one trial, or means).
        baseline: ``<task>_<metric>`` values of the single-task models.
        directions: per task, ``{metric: higher_is_better}`` (``tasks.directions``).
    """
    gains: dict[str, float] = {}
    for task, metrics in directions.items():
        terms = []
        for metric, higher in metrics.items():
            column = f"{task}_{metric}"
            if column not in row or column not in baseline or not math.isfinite(row[column]):
                continue
            base = baseline[column]
            if base == 0:
                raise DataError(f"baseline column '{column}' is 0; Δm divides by the baseline, so it cannot use it")
            sign = -1.0 if higher else 1.0
            terms.append(sign * (base - row[column]) / base * 100.0)
        if not terms:
            raise DataError(f"no baseline for task '{task}': expected columns {task}_<metric> in the --baseline CSVs")
        gains[f"delta_m_{task}"] = sum(terms) / len(terms)
    return {"delta_m": sum(gains.values()) / len(gains), **gains}
