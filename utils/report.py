"""Result tables: per-trial numbers and the study's one-row ``"mean ± std"`` summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from utils.checkpoint import write_text

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
