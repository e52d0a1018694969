"""Result tables: per-trial numbers, the study's one-row ``"mean ± std"`` summary, Δm against baselines."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from utils.checkpoint import write_text
from utils.errors import DataError

#: Which sparsity measures go into the tables, in this order.
SPARSITY_COLUMNS = ("group_sparsity", "filter_sparsity", "param_sparsity", "nonzero_params", "total_params")


def trial_row(test_dict: Mapping[str, Any], *, trial: int) -> dict[str, float]:
    """One flat row of a trial's ``test_dict.json``: ``<task>_<metric>`` plus sparsity columns."""
    row: dict[str, float] = {"trial": trial}
    for task, metrics in test_dict["tasks"].items():
        for metric, value in metrics.items():
            row[f"{task}_{metric}"] = value
    for key in SPARSITY_COLUMNS:
        if key in test_dict.get("sparsity", {}):
            row[key] = test_dict["sparsity"][key]
    for key, value in test_dict.get("extra", {}).items():
        row[key] = value
    return row


def mean_pm_std(trials: pd.DataFrame) -> pd.DataFrame:
    """One row of ``"mean ± std"`` strings (population std over trials), as the study's CSVs."""
    numbers = trials.drop(columns=["trial"], errors="ignore").astype(float)
    cells = {
        column: f"{numbers[column].mean():.4f} ± {numbers[column].std(ddof=0):.4f}"
        for column in numbers.columns
    }
    return pd.DataFrame([cells])


def write_tables(rows: Sequence[Mapping[str, float]], *, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (summary) and ``<name>_trials.csv`` (numbers) atomically."""
    out_dir = Path(out_dir)
    trials = pd.DataFrame(list(rows)).sort_values("trial").reset_index(drop=True)
    summary_path = write_text(out_dir / f"{name}.csv", mean_pm_std(trials).to_csv(index=False))
    trials_path = write_text(out_dir / f"{name}_trials.csv", trials.to_csv(index=False))
    return summary_path, trials_path


def format_summary(rows: Sequence[Mapping[str, float]]) -> str:
    """The summary as a two-column text table (metric, mean ± std) for the console."""
    summary = mean_pm_std(pd.DataFrame(list(rows)))
    table = summary.T.reset_index()
    table.columns = ["metric", f"mean ± std over {len(rows)} trial(s)"]
    return table.to_string(index=False)


def read_baseline(paths: Sequence[str | Path], *, tasks: Sequence[str]) -> dict[str, float]:
    """Mean of every ``<task>_<metric>`` column of ``tasks`` in single-task result CSVs.

    Each file is either a ``_trials.csv`` (numbers, one row per trial: the mean is taken) or a
    summary CSV (one row of ``"mean ± std"`` strings: the mean is read). A task column found
    in two files is ambiguous and refused.
    """
    prefixes = tuple(f"{task}_" for task in tasks)
    baseline: dict[str, float] = {}
    source: dict[str, Path] = {}
    for path in map(Path, paths):
        for column, value in _csv_means(path).items():
            if not column.startswith(prefixes):
                continue
            if column in source:
                raise DataError(f"baseline column '{column}' is in both '{source[column]}' and '{path}'; pass one of them")
            baseline[column], source[column] = value, path
    return baseline


def _csv_means(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise DataError(f"baseline file '{path}' not found; expected a CSV written by get_outputs.py or main_multi_trials.py")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"baseline file '{path}' is not a readable CSV ({str(error).splitlines()[0]})") from None
    means: dict[str, float] = {}
    for column in table.columns:
        values = table[column]
        if values.dtype == object:
            values = values.astype(str).str.split("±").str[0]
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all() and len(numbers):
            means[str(column)] = float(numbers.mean())
    return means


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
        directions: per task, ``{metric: higher_is_better}`` (``Task.higher_is_better``).
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
