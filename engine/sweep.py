"""λ sweeps: one experiment per sparsity strength, then sparsity vs accuracy in one table and figure.

The study chose λ by a grid search (1e-7 … 1e-2); ``lambda_sweep`` in a config runs it. Each λ
is a normal experiment named ``<Experiment_name>_lambda<λ>`` (the study's naming), so its trial
folders, tables and resume behave like any other; λ = 0 is the dense reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

import tasks as task_registry
from engine import trials
from utils import config, plots, report
from utils.checkpoint import write_text
from utils.config import ExperimentConfig
from utils.errors import ConfigError


def lambda_tag(lam: float) -> str:
    """``1e-06`` -> ``1e-6``, as the study wrote λ in experiment names."""
    return f"{lam:g}".replace("e-0", "e-").replace("e+0", "e+")


def sweep_configs(cfg: ExperimentConfig) -> dict[float, ExperimentConfig]:
    """One validated config per λ of ``cfg.lambda_sweep``: group sparsity on for λ > 0, off for λ = 0."""
    if not cfg.lambda_sweep:
        raise ConfigError("config key 'lambda_sweep': expected a non-empty list of λ values")
    if cfg.lambda_list:
        raise ConfigError("config keys 'lambda_sweep' and 'lambda_list': a λ schedule would override the swept λ; set one of them")
    configs = {}
    for lam in dict.fromkeys(cfg.lambda_sweep):
        raw = cfg.model_dump(mode="json", by_alias=True)
        raw.update(Experiment_name=f"{cfg.Experiment_name}_lambda{lambda_tag(lam)}", group_sparsity=lam > 0, lambda_sweep=None)
        raw["bb_optimizer_params"]["lambda"] = lam
        configs[lam] = config.validate(raw, source=f"lambda_sweep λ={lam:g}")
    return configs


def sweep_table(results: Mapping[float, Sequence[Mapping[str, float]]]) -> pd.DataFrame:
    """One row per λ: trials, then ``<column>_mean`` / ``<column>_std`` (population) of sparsity, metrics, the rest."""
    rows = []
    for lam, trial_rows in results.items():
        numbers = pd.DataFrame(list(trial_rows)).drop(columns=["trial"], errors="ignore").astype(float)
        row: dict[str, float] = {"lambda": lam, "trials": len(numbers)}
        sparsity_first = [c for c in report.SPARSITY_COLUMNS if c in numbers] + [
            c for c in numbers if c not in report.SPARSITY_COLUMNS]
        for column in sparsity_first:
            row[f"{column}_mean"] = numbers[column].mean()
            row[f"{column}_std"] = numbers[column].std(ddof=0)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("lambda").reset_index(drop=True)


def run_sweep(cfg: ExperimentConfig, *, trial: int | None = None, out_dir: str | Path = "out_csv") -> pd.DataFrame:
    """Train every λ of ``cfg.lambda_sweep`` (or one trial of each) and write ``<exp>_sweep.csv`` / ``.png``."""
    configs = sweep_configs(cfg)
    results = {lam: trials.run(sub, trial=trial) for lam, sub in configs.items()}
    table = sweep_table(results)
    out_dir = Path(out_dir)
    write_text(out_dir / f"{cfg.Experiment_name}_sweep.csv", table.to_csv(index=False))
    primary = {name: task.primary_metric for name, task in task_registry.build(cfg).items()}
    figure = plots.sweep_figure(table, primary, title=f"{cfg.Experiment_name}: λ sweep ({cfg.setup}, {cfg.dataset_name})")
    plots.save_png(figure, out_dir / f"{cfg.Experiment_name}_sweep.png")
    return table


def format_sweep(cfg: ExperimentConfig, table: pd.DataFrame) -> str:
    """The sweep as a console table: λ, group sparsity and each task's primary metric (mean ± std)."""
    shown = {"λ": table["lambda"].map(lambda_tag), "trials": table["trials"].astype(int)}
    columns = {"group sparsity %": "group_sparsity"}
    columns.update({f"{name} {task.primary_metric}": f"{name}_{task.primary_metric}"
                    for name, task in task_registry.build(cfg).items()})
    for label, column in columns.items():
        scale = 100.0 if column == "group_sparsity" else 1.0
        shown[label] = [f"{scale * m:.4f} ± {scale * s:.4f}" for m, s in zip(table[f"{column}_mean"], table[f"{column}_std"])]
    return pd.DataFrame(shown).to_string(index=False)
