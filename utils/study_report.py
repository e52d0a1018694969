"""The study's results: one table row per (setup, sparsity level), Δm, a results section in Markdown, figures.

Torch-free: it reads the per-trial rows the cells' trials wrote (``report.trial_row``, the
rows of ``<exp>_trials.csv``), so the tables can be rebuilt from the trial folders at any time.

**Δm convention.** The baseline of a task is its single-task **dense** cell (λ = 0): the mean
over that cell's finished trials of each Δm metric of the task (``Task.delta_m_metrics``: the
field's protocol, each quantity once). Each finished trial of a cell gets its own Δm against
those baselines (``utils.report.delta_m``, every task of the cell, REFERENCE §6); the table reports the mean and the population std of those per-trial
values. Δm is linear in the metrics, so the mean equals Δm of the cell's mean row, up to metrics
that are undefined (NaN) in some trials; the std gives the figures their error bars. A
baseline metric whose mean is 0 or not finite cannot be divided by and is left out of Δm (the
summary names it). Single-task rows get Δm too: the sparse ones measure what sparsity costs a
single-task model; the dense one is 0 on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from utils import plots, report
from utils.io import write_text

#: Columns that say what a row is, in this order; the measured columns follow as ``<column>_mean`` / ``_std``.
ID_COLUMNS = ("setup", "kind", "tasks", "level", "family", "lambda", "target", "finetune_epochs", "experiment", "trials", "planned_trials")
#: Sparsity measures of the results table (REFERENCE §7), in this order.
SPARSITY_COLUMNS = ("group_sparsity", "param_sparsity")
#: Compact-model cost columns, taken when the trials' rows hold them; then every ``latency_compact_ms_*``.
COMPACT_COLUMNS = ("params_compact", "gflops_compact")
COMPACT_LATENCY_PREFIX = "latency_compact_ms_"
#: Level families: the λ grid (dense included), sparsity targets, targets or λ with fine-tuning.
FAMILIES = ("lambda", "target", "fine-tuned")

RESULTS_FILE = "results.csv"
METRICS_FILE = "metrics_all.csv"
SUMMARY_FILE = "summary.md"
SPARSITY_FIGURE = "vs_sparsity.png"
GFLOPS_FIGURE = "vs_gflops_compact.png"


@dataclass(frozen=True)
class CellResult:
    """One cell of the study (a setup at a sparsity level) and its finished trials' rows."""

    setup: str
    tasks: tuple[str, ...]
    level: str
    lam: float | None
    target: float | None
    finetune_epochs: int
    experiment: str
    planned_trials: int
    rows: Sequence[Mapping[str, Any]]

    @property
    def multitask(self) -> bool:
        return len(self.tasks) > 1

    @property
    def dense(self) -> bool:
        return self.lam == 0

    @property
    def family(self) -> str:
        if self.finetune_epochs > 0:
            return "fine-tuned"
        return "lambda" if self.target is None else "target"


@dataclass(frozen=True)
class StudyInfo:
    """What the summary says about the study's design, taken from its base experiment."""

    name: str
    dataset: str
    tasks: tuple[str, ...]
    backbone: str
    backbone_width: float
    image_size: tuple[int, int]
    epochs: int
    num_trials: int
    seed: int
    primary: Mapping[str, str]  # task -> primary metric (tasks.primary_metrics)
    directions: Mapping[str, Mapping[str, bool]]  # task -> {metric: higher is better} (tasks.directions)

    def higher(self, task: str) -> bool:
        """Whether a higher primary metric of ``task`` is better."""
        return self.directions[task][self.primary[task]]

    def primary_column(self, task: str) -> str:
        return f"{task}_{self.primary[task]}"


@dataclass(frozen=True)
class Baseline:
    """The single-task dense baselines of Δm: ``<task>_<metric>`` means, and the columns left out."""

    values: dict[str, float]
    left_out: tuple[str, ...]

    def covers(self, tasks: Sequence[str], directions: Mapping[str, Mapping[str, bool]]) -> bool:
        """Every task has at least one baseline metric."""
        return all(any(f"{task}_{metric}" in self.values for metric in directions[task]) for task in tasks)


@dataclass(frozen=True)
class StudyOutputs:
    """The study's artefacts and its results table."""

    table: pd.DataFrame
    results: Path
    metrics: Path
    summary: Path
    figures: tuple[Path, ...]


def baseline(cells: Sequence[CellResult], directions: Mapping[str, Mapping[str, bool]]) -> Baseline:
    """Means over the finished trials of each single-task dense cell, for each Δm metric of its task."""
    values: dict[str, float] = {}
    left_out: list[str] = []
    for cell in cells:
        if cell.multitask or not cell.dense or cell.finetune_epochs:
            continue
        numbers = report.finished(cell.rows)
        for metric in directions[cell.tasks[0]]:
            column = f"{cell.tasks[0]}_{metric}"
            if column not in numbers:
                continue
            mean = float(numbers[column].mean())
            if math.isfinite(mean) and mean != 0:
                values[column] = mean
            else:
                left_out.append(column)
    return Baseline(values, tuple(left_out))


def trial_delta_m(cell: CellResult, base: Baseline, directions: Mapping[str, Mapping[str, bool]]) -> pd.DataFrame | None:
    """Δm and ``delta_m_<task>`` (%) of each finished trial of ``cell``; None without a baseline for each of its tasks."""
    wanted = {task: directions[task] for task in cell.tasks}
    if not base.covers(cell.tasks, directions):
        return None
    rows = report.finished(cell.rows).to_dict("records")
    columns = ["delta_m", *(f"delta_m_{task}" for task in cell.tasks)]
    return pd.DataFrame([report.delta_m(row, base.values, wanted) for row in rows], columns=columns)


def results_table(cells: Sequence[CellResult], info: StudyInfo) -> pd.DataFrame:
    """One row per cell: primary metrics, sparsity, compact cost (when measured) and Δm, each as mean and std."""
    base = baseline(cells, info.directions)
    present = set().union(*(report.finished(cell.rows).columns for cell in cells))
    measured = [info.primary_column(task) for task in info.tasks] + [c for c in SPARSITY_COLUMNS if c in present]
    measured += [c for c in COMPACT_COLUMNS if c in present] + sorted(c for c in present if c.startswith(COMPACT_LATENCY_PREFIX))
    gains = {cell.experiment: trial_delta_m(cell, base, info.directions) for cell in cells}
    gain_columns = ["delta_m", *(f"delta_m_{task}" for task in info.tasks)] if any(g is not None for g in gains.values()) else []
    rows = []
    for cell in cells:
        gain = gains[cell.experiment]
        rows.append(_identity(cell) | _stats(report.finished(cell.rows), measured)
                    | _stats(pd.DataFrame() if gain is None else gain, gain_columns))
    return pd.DataFrame(rows)


def metrics_table(cells: Sequence[CellResult]) -> pd.DataFrame:
    """One row per cell with every measured column of its trials (all metrics, sparsity measures, costs)."""
    tables = [report.finished(cell.rows) for cell in cells]
    columns = list(dict.fromkeys(column for table in tables for column in table.columns))
    return pd.DataFrame([_identity(cell) | _stats(table, columns) for cell, table in zip(cells, tables)])


def _identity(cell: CellResult) -> dict[str, Any]:
    return {
        "setup": cell.setup, "kind": "multitask" if cell.multitask else "single-task", "tasks": "+".join(cell.tasks),
        "level": cell.level, "family": cell.family, "lambda": cell.lam, "target": cell.target, "finetune_epochs": cell.finetune_epochs, "experiment": cell.experiment,
        "trials": len(report.finished(cell.rows)), "planned_trials": cell.planned_trials,
    }


def _stats(numbers: pd.DataFrame, columns: Sequence[str]) -> dict[str, float]:
    """``<column>_mean`` and ``<column>_std`` (population) over the rows of ``numbers``; NaN where a column is absent."""
    stats: dict[str, float] = {}
    for column in columns:
        values = numbers[column] if column in numbers else pd.Series(dtype=float)
        stats[f"{column}_mean"] = float(values.mean())
        stats[f"{column}_std"] = float(values.std(ddof=0))
    return stats


# ----------------------------------------------------------------------------- the summary
def level_label(row: Mapping[str, Any]) -> str:
    """A level as a reader names it: ``dense``, ``λ = 1e-06``, ``target 70 %``, ``… + 20 fine-tuning epochs``."""
    if _given(row["target"]):
        label = f"target {100 * row['target']:g} %"
    else:
        label = "dense" if row["lambda"] == 0 else f"λ = {row['lambda']:g}"
    return label + (f" + {int(row['finetune_epochs'])} fine-tuning epochs" if row["finetune_epochs"] else "")


def setup_label(row: Mapping[str, Any], tasks: Sequence[str]) -> str:
    """``single-task <task>``, ``multitask`` (all of the study's ``tasks``) or ``multitask <a>+<b>``."""
    if row["kind"] == "single-task":
        return f"single-task {row['tasks']}"
    return "multitask" if row["tasks"] == "+".join(tasks) else f"multitask {row['tasks']}"


def _single_dense(records: Sequence[Mapping[str, Any]], task: str) -> Mapping[str, Any] | None:
    """The single-task dense row of ``task`` (its Δm baseline), if the study has one."""
    return next((r for r in records if r["kind"] == "single-task" and r["tasks"] == task and r["lambda"] == 0
                 and not r["finetune_epochs"]), None)


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _mean(row: Mapping[str, Any], column: str) -> float:
    return float(row.get(f"{column}_mean", math.nan))


def _number(value: float, digits: int, *, signed: bool = False) -> str:
    shown = round(value, digits) + 0.0  # + 0.0: no "-0.00" for a value that rounds to zero
    return f"{shown:{'+' if signed else ''}.{digits}f}"


def _pm(row: Mapping[str, Any], column: str, *, scale: float = 1.0, digits: int = 4, signed: bool = False) -> str:
    mean, std = _mean(row, column), float(row.get(f"{column}_std", math.nan))
    if not math.isfinite(mean):
        return "–"
    return f"{_number(scale * mean, digits, signed=signed)} ± {_number(scale * std, digits)}"


def _model(row: Mapping[str, Any], tasks: Sequence[str]) -> str:
    """``the dense multitask model``, ``the single-task depth_euclidean model at λ = 0.1``."""
    if row["lambda"] == 0:
        return f"the dense {setup_label(row, tasks)} model"
    return f"the {setup_label(row, tasks)} model at {level_label(row)}"


def _gain(row: Mapping[str, Any]) -> str:
    return f"Δm = {_pm(row, 'delta_m', digits=2, signed=True)} %"


def _sparsity(row: Mapping[str, Any]) -> str:
    return f"{_pm(row, 'group_sparsity', scale=100, digits=1)} % group sparsity"


def markdown_table(table: pd.DataFrame, info: StudyInfo) -> str:
    """The results as a Markdown table: mean ± std over the finished trials."""
    header = ["setup", "level", "trials", "group sparsity %"]
    header += [f"{task} {info.primary[task]} {'↑' if info.higher(task) else '↓'}" for task in info.tasks]
    has_gain, has_cost = "delta_m_mean" in table, "gflops_compact_mean" in table
    header += ["Δm % ↑"] * has_gain + ["compact GFLOPs", "compact params (M)"] * has_cost
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        cells = [setup_label(row, info.tasks), level_label(row), f"{row['trials']}/{row['planned_trials']}",
                 _pm(row, "group_sparsity", scale=100, digits=1)]
        cells += [_pm(row, info.primary_column(task)) for task in info.tasks]
        cells += [_pm(row, "delta_m", digits=2, signed=True)] * has_gain
        if has_cost:
            cells += [_pm(row, "gflops_compact", digits=3), _pm(row, "params_compact", scale=1e-6, digits=3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(table: pd.DataFrame, info: StudyInfo, *, left_out: Sequence[str] = (), figures: Sequence[str] = ()) -> str:
    """The study's results section: design, table, best cell per task, Δm, sparsity reached, compact cost, figures."""
    records = table.to_dict("records")
    height, width = info.image_size
    levels = ", ".join(dict.fromkeys(level_label(row) for row in records))
    setups = ", ".join(dict.fromkeys(setup_label(row, info.tasks) for row in records))
    width_note = f" (width {info.backbone_width:g})" if info.backbone_width != 1 else ""
    parts = [
        f"# {info.name}: group sparsity for parsimonious multi-task models",
        "",
        f"**Design.** {info.dataset}, tasks {', '.join(info.tasks)}; backbone {info.backbone}{width_note}, "
        f"{height}×{width} inputs, up to {info.epochs} epoch(s). Setups: {setups}. Levels: {levels}. "
        f"{info.num_trials} trial(s) per cell (seeds {info.seed}…{info.seed + info.num_trials - 1}). Every number is the "
        "mean ± population std over a cell's finished trials on the test split, each task tested with its best "
        "validation checkpoint. Δm (%) compares a row with the single-task dense baselines over the standard metrics of "
        "each of its tasks (REFERENCE §6; LibMTL's set on NYU, each quantity once); positive is better than training each task alone and densely. It is computed per "
        "trial, then averaged.",
    ]
    if left_out:
        parts += ["", f"Left out of Δm (baseline mean 0 or undefined): {', '.join(left_out)}."]
    parts += ["", "## Results", "", markdown_table(table, info), "", "## Findings", ""]
    parts += [f"- {line}" for line in _findings(records, info)]
    if figures:
        parts += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(parts) + "\n"


def _findings(records: Sequence[Mapping[str, Any]], info: StudyInfo) -> list[str]:
    lines = [line for line in (_best_per_task(records, info, task) for task in info.tasks) if line]
    if records and "delta_m_mean" in records[0]:
        multitask = dict.fromkeys(r["tasks"] for r in records if r["kind"] == "multitask")
        lines += [_multitask_gain([r for r in records if r["tasks"] == tasks], info) for tasks in multitask]
        lines += _single_task_cost(records, info)
    else:
        lines.append("No Δm: some task of the study has no single-task dense cell (λ = 0).")
    lines += _sparsity_reached(records, info)
    if records and "gflops_compact_mean" in records[0]:
        lines += _compact_cost(records, info)
    short = [r for r in records if r["trials"] < r["planned_trials"]]
    if short:
        lines.append("Incomplete cells (finished / planned trials): " + "; ".join(
            f"{setup_label(r, info.tasks)} at {level_label(r)} {r['trials']}/{r['planned_trials']}" for r in short) + ".")
    return lines


def _finite(rows: Sequence[Mapping[str, Any]], column: str) -> list[Mapping[str, Any]]:
    return [row for row in rows if math.isfinite(_mean(row, column))]


def _best_per_task(records: Sequence[Mapping[str, Any]], info: StudyInfo, task: str) -> str:
    column = info.primary_column(task)
    rows = _finite(records, column)
    if not rows:
        return ""
    higher = info.higher(task)
    best = (max if higher else min)(rows, key=lambda row: _mean(row, column))
    text = (f"**{task}** ({info.primary[task]}, {'higher' if higher else 'lower'} is better): best {_pm(best, column)} "
            f"by {_model(best, info.tasks)} ({_sparsity(best)})")
    reference = _single_dense(rows, task)
    if reference is not None and reference is not best:
        text += f"; the single-task dense model has {_pm(reference, column)}"
    return text + "."


def _multitask_gain(rows: Sequence[Mapping[str, Any]], info: StudyInfo) -> str:
    name = setup_label(rows[0], info.tasks)
    measured = _finite(rows, "delta_m")
    if not measured:
        return f"**{name} vs single-task**: no Δm (no finished trial, or a task without a usable single-task dense baseline)."
    parts = []
    dense = next((r for r in measured if r["lambda"] == 0), None)
    if dense is not None:
        per_task = ", ".join(f"{task} {_number(_mean(dense, f'delta_m_{task}'), 2, signed=True)} %"
                             for task in str(dense["tasks"]).split("+"))
        parts.append(f"dense, {_gain(dense)} ({per_task})")
    best = max(measured, key=lambda row: _mean(row, "delta_m"))
    parts.append(f"best {_gain(best)} ({level_label(best)}, {_sparsity(best)}{_within_noise(best, dense)})")
    keeping = [r for r in measured if _mean(r, "delta_m") >= 0 and _mean(r, "group_sparsity") > 0]
    if keeping:
        sparsest = max(keeping, key=lambda row: _mean(row, "group_sparsity"))
        parts.append(f"the sparsest cell that matches or beats the single-task dense models (Δm ≥ 0) is {level_label(sparsest)}, "
                     f"{_sparsity(sparsest)}, {_gain(sparsest)}")
    else:
        parts.append("no sparse cell reaches Δm ≥ 0")
    return f"**{name} vs single-task**: " + "; ".join(parts) + "."


def _within_noise(row: Mapping[str, Any], dense: Mapping[str, Any] | None) -> str:
    """A caution when ``row``'s Δm differs from the dense row's by no more than the larger std over trials."""
    if dense is None or row is dense:
        return ""
    spread = max(float(row.get("delta_m_std", math.nan)), float(dense.get("delta_m_std", math.nan)))
    if math.isfinite(spread) and abs(_mean(row, "delta_m") - _mean(dense, "delta_m")) <= spread:
        return "; within one std of dense over trials, so not a clear difference"
    return ""


def _single_task_cost(records: Sequence[Mapping[str, Any]], info: StudyInfo) -> list[str]:
    lines = []
    for task in info.tasks:
        sparse = [r for r in _finite(records, "delta_m") if r["kind"] == "single-task" and r["tasks"] == task
                  and _mean(r, "group_sparsity") > 0]
        if sparse:
            sparsest = max(sparse, key=lambda row: _mean(row, "group_sparsity"))
            lines.append(f"**single-task {task}** at its sparsest ({level_label(sparsest)}, {_sparsity(sparsest)}): "
                         f"{_gain(sparsest)} against its dense model.")
    return lines


def _sparsity_reached(records: Sequence[Mapping[str, Any]], info: StudyInfo) -> list[str]:
    parts = []
    for tasks in dict.fromkeys(r["tasks"] for r in records):
        rows = _finite([r for r in records if r["tasks"] == tasks], "group_sparsity")
        if rows:
            top = max(rows, key=lambda row: _mean(row, "group_sparsity"))
            parts.append(f"{setup_label(top, info.tasks)} up to {100 * _mean(top, 'group_sparsity'):.1f} % ({level_label(top)})")
    return ["**Sparsity reached** (zero input-channel groups of the backbone): " + "; ".join(parts) + "."] if parts else []


def _compact_cost(records: Sequence[Mapping[str, Any]], info: StudyInfo) -> list[str]:
    multi = _finite([r for r in records if r["kind"] == "multitask" and r["tasks"] == "+".join(info.tasks)], "gflops_compact")
    if not multi:
        return []
    cheapest = min(multi, key=lambda row: _mean(row, "gflops_compact"))
    text = f"**Compact cost**: the cheapest compact multitask model ({level_label(cheapest)}) needs {_mean(cheapest, 'gflops_compact'):.3f} GFLOPs per image"
    if math.isfinite(_mean(cheapest, "params_compact")):
        text += f" and {_mean(cheapest, 'params_compact') / 1e6:.3f} M parameters"
    dense = next((r for r in multi if r["lambda"] == 0), None)
    if dense is not None and dense is not cheapest:
        text += f" ({100 * (_mean(cheapest, 'gflops_compact') / _mean(dense, 'gflops_compact') - 1):+.1f} % GFLOPs against the dense one)"
    singles = [_single_dense(records, task) for task in info.tasks]
    if all(r is not None and math.isfinite(_mean(r, "gflops_compact")) for r in singles):
        total = sum(_mean(r, "gflops_compact") for r in singles if r is not None)
        text += f"; the {len(singles)} single-task dense models together need {total:.3f} GFLOPs"
    return [text + "."]


# ----------------------------------------------------------------------------- writing it all
def write_study(cells: Sequence[CellResult], info: StudyInfo, *, folder: str | Path) -> StudyOutputs:
    """Write ``results.csv``, ``metrics_all.csv``, the figures and ``summary.md`` into ``folder`` (atomically)."""
    folder = Path(folder)
    table = results_table(cells, info)
    results = write_text(folder / RESULTS_FILE, table.to_csv(index=False))
    metrics = write_text(folder / METRICS_FILE, metrics_table(cells).to_csv(index=False))
    figures = [plots.save_png(_figure(table, info, x="group_sparsity"), folder / SPARSITY_FIGURE)]
    if "gflops_compact_mean" in table and table["gflops_compact_mean"].notna().any():
        figures.append(plots.save_png(_figure(table, info, x="gflops_compact"), folder / GFLOPS_FIGURE))
    left_out = baseline(cells, info.directions).left_out
    summary = write_text(folder / SUMMARY_FILE, summary_markdown(table, info, left_out=left_out, figures=[p.name for p in figures]))
    return StudyOutputs(table=table, results=results, metrics=metrics, summary=summary, figures=tuple(figures))


def _figure(table: pd.DataFrame, info: StudyInfo, *, x: str) -> Figure:
    """Δm (when computed) and each task's primary metric against ``x``; the single-task dense values dashed."""
    records = table.to_dict("records")
    panels: dict[str, str] = {}
    references: dict[str, float] = {}
    if "delta_m_mean" in table:
        panels["Δm vs single-task dense (%) ↑"] = "delta_m"
        references["delta_m"] = 0.0
    for task in info.tasks:
        column = info.primary_column(task)
        panels[f"{task}: {info.primary[task]} {'↑' if info.higher(task) else '↓'}"] = column
        dense = _single_dense(records, task)
        if dense is not None and math.isfinite(_mean(dense, column)):
            references[column] = _mean(dense, column)
    sparsity = x == "group_sparsity"
    return plots.study_figure(
        table, panels, x=x, x_scale=100.0 if sparsity else 1.0, references=references,
        x_label="group sparsity of the backbone (%)" if sparsity else "compact GFLOPs per image",
        labels={row["setup"]: setup_label(row, info.tasks) for row in records},
        title=f"{info.name}: {info.dataset}, {info.backbone}; mean ± std over trials",
    )
