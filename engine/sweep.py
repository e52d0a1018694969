"""λ sweeps: one experiment per sparsity strength, sparsity vs accuracy in one table and figure, and a best λ.

The study chose λ by a grid search (``main_gridsearch.py``: 1e-7 … 1e-2). Each λ is a normal
experiment named ``<Experiment_name>_lambda_<λ>`` (the study's naming, ``str(λ)``), so its trial
folders, tables and resume behave like any other; λ = 0 is the dense reference. The data is
decoded once for the whole sweep.

**Best λ** (recorded in the sweep table and in ``<exp>_best_lambda.json``): among the λ whose
mean group sparsity lies in ``best_lambda_band`` (default 25–80 %, the study's band), the one
with the best Δm on the **validation** split against the sweep's smallest λ (``Task.delta_m_metrics``), every metric's
direction respected (REFERENCE §6). The study compared each λ with the first one only and
counted a higher depth error as better; here Δm weighs every task and metric the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import data
import tasks as task_registry
from engine import artifacts, distributed, trials
from engine.distributed import Context
from engine.trial import resolve
from utils import config, io, plots, report
from utils.config import ExperimentConfig
from utils.errors import ConfigError, TrialsFailed

log = logging.getLogger("gsmtl")


def lambda_tag(lam: float) -> str:
    """``str(λ)``, as the study's grid search wrote λ in experiment names (``1e-07``, ``0.0001``)."""
    return str(float(lam))


def is_sweep(cfg: ExperimentConfig) -> bool:
    """Whether the config stands for several experiments (``lambda_sweep`` or ``sparsity_sweep``)."""
    return bool(cfg.lambda_sweep or cfg.sparsity_sweep)


def sweep_key(cfg: ExperimentConfig) -> str:
    """What a sweep varies: ``"target"`` (``sparsity_sweep``) or ``"lambda"``."""
    return "target" if cfg.sparsity_sweep else "lambda"


def sweep_configs(cfg: ExperimentConfig, lambdas: Sequence[float] | None = None) -> dict[float, ExperimentConfig]:
    """One validated config per swept level: per λ of ``lambdas`` (default ``cfg.lambda_sweep``; group sparsity
    on for λ > 0, off for 0), or per target of ``sparsity_sweep`` (``<exp>_target_<t>``, λ controlled)."""
    if cfg.sparsity_sweep and lambdas is None:
        configs = {}
        for target in dict.fromkeys(float(value) for value in cfg.sparsity_sweep):
            raw = config.to_dict(cfg)
            raw.update(Experiment_name=f"{cfg.Experiment_name}_target_{target:g}", target_group_sparsity=target, sparsity_sweep=None)
            configs[target] = config.validate(raw, source=f"sparsity_sweep target={target:g}")
        return configs
    lambdas = list(lambdas if lambdas is not None else cfg.lambda_sweep or [])
    if not lambdas:
        raise ConfigError("config key 'lambda_sweep': expected a non-empty list of λ values")
    configs = {}
    for lam in dict.fromkeys(float(value) for value in lambdas):
        raw = config.to_dict(cfg)
        raw.update(Experiment_name=f"{cfg.Experiment_name}_lambda_{lambda_tag(lam)}", group_sparsity=lam > 0, lambda_sweep=None)
        raw["bb_optimizer_params"]["lambda"] = lam
        configs[lam] = config.validate(raw, source=f"lambda_sweep λ={lam:g}")
    return configs


def sweep_table(results: Mapping[float, Sequence[Mapping[str, Any]]], key: str = "lambda") -> pd.DataFrame:
    """One row per level (λ or target, ``key``): trials, then ``<column>_mean`` / ``<column>_std`` (population)
    of sparsity, metrics, the rest."""
    rows = []
    for lam, trial_rows in results.items():
        numbers = report.finished(trial_rows)
        if numbers.empty:  # every trial of this level failed (a λ too large diverges): a row that says so
            rows.append({key: lam, "trials": 0})
            continue
        ordered = [c for c in report.SPARSITY_COLUMNS if c in numbers] + [c for c in numbers if c not in report.SPARSITY_COLUMNS]
        stats = numbers[ordered].agg(["mean", lambda column: column.std(ddof=0)])
        row: dict[str, float] = {key: lam, "trials": len(numbers)}
        for column in ordered:
            row[f"{column}_mean"] = stats.at["mean", column]
            row[f"{column}_std"] = stats.iloc[1][column]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(key).reset_index(drop=True)


def validation_means(configs: Mapping[float, ExperimentConfig]) -> dict[float, dict[str, float]]:
    """Per λ, the mean over its finished trials of every ``<task>_<metric>`` on the validation split."""
    means: dict[float, dict[str, float]] = {}
    for lam, cfg in configs.items():
        rows = []
        for index in range(cfg.num_trials):
            folder = artifacts.trial_folder(cfg, index)
            if (folder / artifacts.TEST_FILE).is_file() and "val" in (result := artifacts.read_result(folder)):
                rows.append({f"{task}_{key}": value for task, metrics in result["val"].items() for key, value in metrics.items()})
        if rows:
            means[lam] = pd.DataFrame(rows).mean().to_dict()
    return means


def best_lambda(table: pd.DataFrame, val: Mapping[float, Mapping[str, float]], *,
                directions: Mapping[str, Mapping[str, bool]], band: tuple[float, float]) -> tuple[float | None, dict[float, float]]:
    """The λ with the best validation Δm against the smallest λ among those with group sparsity in ``band``.

    ``directions`` are the tasks' ``{metric: higher_is_better}`` (``tasks.directions``).
    Returns the chosen λ (None when no λ falls in the band) and every λ's validation Δm (%).
    """
    if not val:
        return None, {}
    reference_lambda = min(val)
    # A metric that is 0 at the reference (e.g. no pixel within 11.25° yet) has no relative change: left out.
    reference = {key: value for key, value in val[reference_lambda].items() if value != 0 and math.isfinite(value)}
    usable = {task: {m: h for m, h in metrics.items() if f"{task}_{m}" in reference} for task, metrics in directions.items()}
    usable = {task: metrics for task, metrics in usable.items() if metrics}
    gains = {lam: report.delta_m(values, reference, usable)["delta_m"] for lam, values in val.items()}
    sparsity = dict(zip(table["lambda"], table.get("group_sparsity_mean", pd.Series(dtype=float))))
    low, high = band
    eligible = [lam for lam in gains if lam in sparsity and low < sparsity[lam] < high]
    return (max(eligible, key=lambda lam: gains[lam]) if eligible else None), gains


def run_sweep(
    cfg: ExperimentConfig, *, lambdas: Sequence[float] | None = None, trial: int | None = None,
    out_dir: str | Path = "out_csv", stop: trials.StopRequest = lambda: None, context: Context = distributed.SINGLE,
) -> pd.DataFrame:
    """Train every λ (or one trial of each), write ``<exp>_sweep.csv`` / ``.png`` and ``<exp>_best_lambda.json``."""
    configs = sweep_configs(cfg, lambdas)
    first = resolve(next(iter(configs.values())))
    splits = data.build(first)
    for sub in configs.values():
        trials.run(sub, trial=trial, splits=splits, stop=stop, out_dir=out_dir, context=context)
    return collect_sweep(cfg, configs, out_dir=out_dir) if context.is_main else pd.DataFrame()


def collect_sweep(cfg: ExperimentConfig, configs: Mapping[float, ExperimentConfig], *, out_dir: str | Path = "out_csv") -> pd.DataFrame:
    """The sweep's table, best λ (λ sweeps) or final λ (target sweeps) and figure from the finished trials."""
    key = sweep_key(cfg)
    results = {lam: trials.write_report(sub, out_dir=out_dir) for lam, sub in configs.items()}
    if not any(results.values()):
        raise TrialsFailed(f"no trial of {cfg.Experiment_name} finished at any {key}; the reasons are in "
                           f"{out_dir}/{cfg.Experiment_name}_{key}_<{key}>_trials.csv")
    table = sweep_table(results, key)
    out_dir = Path(out_dir)
    if key == "target":
        finals = {target: final_lambdas(sub) for target, sub in configs.items()}
        # The λ the controller ended with (mean over trials): the column the figure labels its points with.
        table.insert(1, "lambda", table["target"].map(lambda t: float(pd.Series(finals[t]).mean()) if finals[t] else float("nan")))
        table.insert(2, "lambda_std", table["target"].map(lambda t: float(pd.Series(finals[t]).std(ddof=0)) if finals[t] else float("nan")))
        io.write_text(out_dir / f"{cfg.Experiment_name}_sweep.csv", table.to_csv(index=False))
        figure = plots.sweep_figure(table, task_registry.primary_metrics(cfg.task_list),
                                    title=f"{cfg.Experiment_name}: sparsity targets ({cfg.setup}, {cfg.dataset_name})")
        plots.save_png(figure, out_dir / f"{cfg.Experiment_name}_sweep.png")
        return table
    chosen, gains = best_lambda(table, validation_means(configs), directions=task_registry.directions(cfg.task_list),
                                band=cfg.best_lambda_band)
    table["val_delta_m"] = table["lambda"].map(gains)
    table["best_lambda"] = table["lambda"] == chosen
    io.write_text(out_dir / f"{cfg.Experiment_name}_sweep.csv", table.to_csv(index=False))
    io.write_json(out_dir / f"{cfg.Experiment_name}_best_lambda.json", {
        "best_lambda": chosen, "rule": "best validation delta_m against the smallest lambda, group sparsity in the band",
        "band": list(cfg.best_lambda_band), "reference_lambda": min(gains) if gains else None,
        "val_delta_m": {lambda_tag(lam): gain for lam, gain in gains.items()},
    })
    if chosen is None:
        log.warning("no λ reached a group sparsity inside best_lambda_band %s; no best λ recorded", list(cfg.best_lambda_band))
    else:
        log.info("best λ = %s (validation Δm %+.2f %% against λ = %s)", lambda_tag(chosen), gains[chosen], lambda_tag(min(gains)))
    figure = plots.sweep_figure(table, task_registry.primary_metrics(cfg.task_list),
                                title=f"{cfg.Experiment_name}: λ sweep ({cfg.setup}, {cfg.dataset_name})")
    plots.save_png(figure, out_dir / f"{cfg.Experiment_name}_sweep.png")
    return table


def final_lambdas(cfg: ExperimentConfig) -> list[float]:
    """The λ each finished trial of ``cfg`` ended with (its training history's last entry)."""
    finals = []
    for index in range(cfg.num_trials):
        folder = artifacts.trial_folder(cfg, index)
        if (folder / artifacts.TEST_FILE).is_file():
            history = io.read_json(folder / artifacts.HISTORY_FILES[0])
            if history.get("lambda"):
                finals.append(float(history["lambda"][-1]))
    return finals


def format_sweep(cfg: ExperimentConfig, table: pd.DataFrame) -> str:
    """The sweep as a console table: λ (or target and final λ), group sparsity, each task's primary metric, validation Δm."""
    if sweep_key(cfg) == "target":
        shown: dict[str, Any] = {"target %": (100 * table["target"]).map("{:.0f}".format),
                                 "final λ": table["lambda"].map("{:.3g}".format), "trials": table["trials"].astype(int)}
    else:
        shown = {"λ": table["lambda"].map(lambda_tag), "trials": table["trials"].astype(int)}
    columns = {"group sparsity %": "group_sparsity"}
    columns.update({f"{name} {metric}": f"{name}_{metric}" for name, metric in task_registry.primary_metrics(cfg.task_list).items()})
    for label, column in columns.items():
        scale = 100.0 if column == "group_sparsity" else 1.0
        shown[label] = [f"{scale * m:.4f} ± {scale * s:.4f}" for m, s in zip(table[f"{column}_mean"], table[f"{column}_std"])]
    if "val_delta_m" in table:
        shown["val Δm %"] = [f"{value:+.2f}" if pd.notna(value) else "" for value in table["val_delta_m"]]
        shown["best"] = ["*" if best else "" for best in table["best_lambda"]]
    return pd.DataFrame(shown).to_string(index=False)
