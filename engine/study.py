"""The study in one command: every (setup, sparsity level) cell trained, tested and tabulated.

    python -m engine.study --config config/study_NYU.yaml
    python -m engine.study --config config/study_demo.yaml --set data_dir_NYU=.cache/other

A study file names a base experiment (an experiment YAML, or its keys embedded), the setups
(each task alone, all tasks together, extra multitask subsets), the sparsity levels (λ values,
0 = dense; sparsity targets, optionally fine-tuned) and the trials::

    study: study_NYU                      # tables go to <out_dir>/study_NYU/
    experiment: exp_single_mtl_NYU.yaml   # a file (relative to this one) or a mapping of experiment keys
    set: {data_dir_NYU: datasets/NYUD_MT} # experiment keys over the base (nested mappings merge)
    setups: {singletask: true, multitask: true, subsets: [[segmentsemantic, depth_euclidean]]}
    levels: [0, 1.0e-6, 1.0e-5, {target: 0.7}, {target: 0.7, finetune_epochs: 20}]
    num_trials: 5                         # default: the experiment's
    out_dir: out_csv

Each cell is an ordinary experiment named ``<study>_<setup>_<level>`` (setups ``single_<task>``,
``multi``, ``multi_<a>+<b>``; levels ``dense``, ``lambda_<λ>``, ``target_<t>``, ``…_ft<n>``), trained
by one :func:`engine.trials.run` call, so a launcher can run cells anywhere. A cell whose trials
all finished with the same config is not trained again; an interrupted study rerun goes on where
it stopped and ends with the same tables. The tables, the summary and the figures are written by
:mod:`utils.study_report` into ``<out_dir>/<study>/``; each cell's own ``<exp>.csv`` and
``<exp>_trials.csv`` go to ``<out_dir>/<study>/cells/``.

The whole study (every cell's config) is validated before torch is imported: a broken file fails
in about a second with one line naming the key and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from utils import cli, config, yaml_io
from utils.cli import main_guard
from utils.config import Bool, ExperimentConfig, FolderName, NonNegFloat, NonNegInt, PosInt
from utils.errors import ConfigError

if TYPE_CHECKING:
    from engine.launcher import LaunchOptions
    from engine.trials import StopRequest
    from utils.study_report import CellResult, StudyInfo, StudyOutputs

log = logging.getLogger("gsmtl")

Fraction = Annotated[float, Strict(), Field(gt=0, lt=1)]
#: Experiment keys the levels own: a base experiment that sets them would fight the levels.
LEVEL_KEYS = ("lambda_list", "lambda_sweep", "sparsity_sweep", "target_group_sparsity", "finetune_epochs")
CELLS_FOLDER = "cells"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Level(_Section):
    """One sparsity level: a λ (0 = dense) or a target group sparsity, optionally fine-tuned; a bare number is a λ."""

    lambda_: NonNegFloat | None = Field(None, alias="lambda")
    target: Fraction | None = None
    finetune_epochs: NonNegInt = 0

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: Any) -> Any:
        return {"lambda": data} if isinstance(data, int | float) and not isinstance(data, bool) else data

    @model_validator(mode="after")
    def _one_kind(self) -> Level:
        if (self.lambda_ is None) == (self.target is None):
            raise ValueError("a level is a λ (a number, or {lambda: λ}) or a {target: t}; expected exactly one of them")
        if self.finetune_epochs and self.lambda_ == 0:
            raise ValueError("finetune_epochs: fine-tuning needs a sparse level (λ > 0 or a target), not the dense one")
        return self

    @property
    def tag(self) -> str:
        """The level's part of the cell name: ``dense``, ``lambda_1e-06`` (``str(λ)``, as sweeps name λ), ``target_0.7``."""
        if self.target is not None:
            tag = f"target_{self.target}"
        else:
            tag = "dense" if self.lambda_ == 0 else f"lambda_{float(self.lambda_)}"
        return tag + (f"_ft{self.finetune_epochs}" if self.finetune_epochs else "")

    def apply(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Experiment keys of this level on top of ``raw``: group sparsity, λ or the target, fine-tuning epochs."""
        raw = dict(raw)
        if self.target is not None:
            raw.update(group_sparsity=True, target_group_sparsity=self.target)
        else:
            raw.update(group_sparsity=self.lambda_ > 0, target_group_sparsity=None)
            raw["bb_optimizer_params"] = {**raw["bb_optimizer_params"], "lambda": self.lambda_}
        raw["finetune_epochs"] = self.finetune_epochs
        return raw


class Setups(_Section):
    """Which task sets a study trains: each task alone, all together, and extra multitask subsets."""

    singletask: Bool = True
    multitask: Bool = True
    subsets: list[Annotated[list[str], Field(min_length=2)]] = []


class StudyFile(_Section):
    """The study file's keys (see the module docstring)."""

    study: FolderName
    experiment: str | dict[str, Any]
    set_: dict[str, Any] = Field({}, alias="set")
    setups: Setups = Setups()
    levels: list[Level] = Field(min_length=1)
    num_trials: PosInt | None = None
    out_dir: str = "out_csv"


@dataclass(frozen=True)
class Cell:
    """One experiment of the study: a setup (its tasks) at a level, with its validated config."""

    setup: str
    tasks: tuple[str, ...]
    level: Level
    cfg: ExperimentConfig

    @property
    def name(self) -> str:
        return self.cfg.Experiment_name


@dataclass(frozen=True)
class Study:
    """A validated study: its base experiment and every cell, grouped by setup (cells of a setup share their data)."""

    name: str
    base: ExperimentConfig
    cells: tuple[Cell, ...]
    out_dir: Path

    @property
    def folder(self) -> Path:
        """``<out_dir>/<study>``: the study's tables, summary and figures."""
        return self.out_dir / self.name

    @property
    def cells_folder(self) -> Path:
        """Where each cell's ``<exp>.csv`` and ``<exp>_trials.csv`` go."""
        return self.folder / CELLS_FOLDER


# ----------------------------------------------------------------------------- loading and planning
def load(path: str | Path, overrides: Iterable[str] = ()) -> Study:
    """Read and validate a study file and plan its cells; ``overrides`` (``key=value``, dotted) change experiment keys."""
    path = Path(path)
    raw = yaml_io.read_mapping(path, kind="study")
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {_describe(error.errors()[0])}") from None
    experiment = _merge(_base_keys(spec, path), spec.set_)
    for override in overrides:
        experiment = _merge(experiment, _dotted(override))
    return plan(spec, experiment, source=str(path))


def plan(spec: StudyFile, experiment: Mapping[str, Any], *, source: str = "study") -> Study:
    """Every cell of ``spec`` on the experiment keys ``experiment``, each validated; setup by setup, levels in file order."""
    base = _validate_base(spec, experiment, source=source)
    tags = [level.tag for level in spec.levels]
    repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
    if repeated:
        raise ConfigError(f"{source}: key 'levels': {repeated} listed more than once")
    cells = []
    for setup, tasks in _setups(spec.setups, base.task_list, source=source):
        for level in spec.levels:
            name = f"{spec.study}_{setup}_{level.tag}"
            raw = config.to_dict(base) | {"Experiment_name": name, "task_list": list(tasks),
                                          "setup": "multitask" if len(tasks) > 1 else "singletask"}
            if base.loss_weights is not None:
                raw["loss_weights"] = {task: base.loss_weights[task] for task in tasks}
            cells.append(Cell(setup, tasks, level, config.validate(level.apply(raw), source=f"{source}: cell '{name}'")))
    return Study(name=spec.study, base=base, cells=tuple(cells), out_dir=Path(spec.out_dir))


def _base_keys(spec: StudyFile, path: Path) -> dict[str, Any]:
    """The base experiment's raw keys: the embedded mapping, or the file (relative to the study file)."""
    if isinstance(spec.experiment, dict):
        return dict(spec.experiment)
    file = Path(spec.experiment).expanduser()
    file = file if file.is_absolute() else path.parent / file
    return yaml_io.read_mapping(file, kind="experiment", missing=(
        f"{path}: key 'experiment': file '{file}' not found; expected an experiment YAML (a path relative to the study file)"))


def _validate_base(spec: StudyFile, experiment: Mapping[str, Any], *, source: str) -> ExperimentConfig:
    """The base experiment, validated as the study's dense model (its name, setup and sparsity come from the study)."""
    raw = {**experiment, "Experiment_name": spec.study, "group_sparsity": False}
    if spec.num_trials is not None:
        raw["num_trials"] = spec.num_trials
    tasks = raw.get("task_list")
    if isinstance(tasks, list):
        raw["setup"] = "multitask" if len(tasks) > 1 else "singletask"
    base = config.validate(raw, source=f"{source}: experiment")
    for key in LEVEL_KEYS:
        if getattr(base, key):
            raise ConfigError(f"{source}: experiment key '{key}': the study's levels set each cell's sparsity; "
                              "remove it (or make it a level)")
    return base


def _setups(setups: Setups, tasks: Sequence[str], *, source: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, tasks)`` of every setup: ``single_<task>`` per task, ``multi`` (all tasks), ``multi_<a>+<b>`` per subset."""
    chosen: list[tuple[str, tuple[str, ...]]] = []
    if setups.singletask:
        chosen += [(f"single_{task}", (task,)) for task in tasks]
    if setups.multitask:
        if len(tasks) < 2:
            raise ConfigError(f"{source}: key 'setups.multitask': the experiment's task_list {list(tasks)} has one task; "
                              "expected at least two (or multitask: false)")
        chosen.append(("multi", tuple(tasks)))
    for index, subset in enumerate(setups.subsets):
        where = f"{source}: key 'setups.subsets.{index}'"
        unknown = [task for task in subset if task not in tasks]
        if unknown:
            raise ConfigError(f"{where}: {unknown} not in the experiment's task_list {list(tasks)}")
        if len(set(subset)) != len(subset):
            raise ConfigError(f"{where}: tasks repeat in {subset}")
        ordered = tuple(task for task in tasks if task in subset)
        if ordered == tuple(tasks):
            raise ConfigError(f"{where}: {subset} is every task; that is setups.multitask")
        name = "multi_" + "+".join(ordered)
        if any(name == other for other, _ in chosen):
            raise ConfigError(f"{where}: {subset} is listed twice")
        chosen.append((name, ordered))
    if not chosen:
        raise ConfigError(f"{source}: key 'setups': every setup is off; expected singletask, multitask or subsets")
    return chosen


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` on top; nested mappings merge key by key (``bb_optimizer_params: {lambda: …}``)."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = _merge(old, value) if isinstance(value, Mapping) and isinstance(old, Mapping) else value
    return merged


def _dotted(override: str) -> dict[str, Any]:
    """``a.b=1`` as ``{"a": {"b": 1}}`` (the value parsed as YAML)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value (dotted keys for nested ones)")
    value: Any = yaml_io.parse(text, source=f"--set {key.strip()}")
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _describe(error: Mapping[str, Any]) -> str:
    """A pydantic error of the study file as one line naming the key."""
    key = ".".join(str(part) for part in error["loc"] if not str(part).startswith(("function-", "json-or-python")))
    if error["type"] == "extra_forbidden":
        return f"unknown study key '{key}'; expected one of {_known(error['loc'])}"
    if error["type"] == "missing":
        return f"missing required study key '{key}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"key '{key}': {message}" + ("" if "got" in message else f" (got {error.get('input')!r})")


def _known(loc: Sequence[Any]) -> list[str]:
    model: type[BaseModel] = {"setups": Setups, "levels": Level}.get(str(loc[0]), StudyFile) if len(loc) > 1 else StudyFile
    return [field.alias or name for name, field in model.model_fields.items()]


# ----------------------------------------------------------------------------- running
def run(study: Study, *, stop: StopRequest = lambda: None, launch: LaunchOptions | None = None) -> StudyOutputs | None:
    """Train every unfinished cell (one :func:`engine.trials.run` call each, or every unfinished trial as a
    submitit job with ``launch``), then write the study's tables and figures (None: submitted, not waited for)."""
    import data
    from engine import artifacts, launcher, trials
    from engine.trial import resolve
    from utils import study_report

    if launch is not None:
        work = launcher.unfinished([(cell.cfg, index) for cell in study.cells for index in range(cell.cfg.num_trials)])
        log.info("%s: %d unfinished trial(s) in %d cell(s), submitted as jobs", study.name, len(work), len(study.cells))
        failed = launcher.run_jobs(work, launch, name=study.name, out_dir=study.cells_folder)
        if failed is None:
            return None
        if failed:  # a trial without its job's result: stop rather than train it here, on the submitting machine
            raise launcher.failure(failed, len(work), launch.folder)
    started = time.monotonic()
    results: list[CellResult] = []
    key: tuple | None = None
    splits: data.Splits | None = None
    for number, cell in enumerate(study.cells, 1):
        cfg = resolve(cell.cfg)
        where = f"[{number}/{len(study.cells)}] {cell.name}"
        finished = sum(artifacts.is_finished(artifacts.trial_folder(cfg, index), cfg) for index in range(cfg.num_trials))
        # With launch the jobs ran every trial: one that diverged in its job is marked failed, not retrained here.
        if launch is not None or finished == cfg.num_trials:
            log.info("%s: %d of %d trial(s) finished; none trained here", where, finished, cfg.num_trials)
            rows = trials.write_report(cfg, out_dir=study.cells_folder)
        else:
            log.info("%s: training %d of %d trial(s)", where, cfg.num_trials - finished, cfg.num_trials)
            if data.data_key(cfg) != key:  # cells come setup by setup: one decoded dataset at a time, each once
                key, splits = data.data_key(cfg), None
                splits = data.build(cfg)
            rows = trials.run(cfg, splits=splits, stop=stop, out_dir=study.cells_folder)
        results.append(study_report.CellResult(
            setup=cell.setup, tasks=cell.tasks, level=cell.level.tag, lam=cell.level.lambda_, target=cell.level.target,
            finetune_epochs=cell.level.finetune_epochs, experiment=cell.name, planned_trials=cfg.num_trials, rows=rows,
        ))
        log.info("%s done: %s; %d/%d cells done, %.0f s elapsed", where, _short(rows), number, len(study.cells),
                 time.monotonic() - started)
    outputs = study_report.write_study(results, study_info(study), folder=study.folder)
    log.info("wrote %s, %s, %s and %s", outputs.results, outputs.metrics, outputs.summary, ", ".join(map(str, outputs.figures)))
    return outputs


def study_info(study: Study) -> StudyInfo:
    """What the summary says about the study's design."""
    import tasks as task_registry
    from utils.study_report import StudyInfo

    base = study.base
    return StudyInfo(
        name=study.name, dataset=base.dataset_name, tasks=tuple(base.task_list), backbone=base.backbone,
        backbone_width=base.backbone_width, image_size=base.image_size, epochs=base.epochs, num_trials=base.num_trials,
        seed=base.seed, primary=task_registry.primary_metrics(base.task_list), directions=task_registry.directions(base.task_list),
    )


def _short(rows: Sequence[Mapping[str, Any]]) -> str:
    """Finished trials and their mean group sparsity, for the progress line."""
    values = [row["group_sparsity"] for row in rows if isinstance(row.get("group_sparsity"), float)]
    sparsity = f", group sparsity {100 * sum(values) / len(values):.1f} %" if values and all(map(math.isfinite, values)) else ""
    return f"{len(rows)} finished trial(s){sparsity}"


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m engine.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study YAML file (config/study_NYU.yaml, config/study_demo.yaml, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an experiment key of every cell, dotted for nested keys (e.g. --set data_dir_NYU=/data/NYUD_MT); repeatable")
    cli.add_launch_flags(parser, launcher_help="'submitit': every unfinished trial of every cell as a job (default: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from utils.signals import EXIT_CODES, StopOnSignal

        study = load(args.config, args.overrides)
        config.check_paths(study.base, out_dir=study.out_dir)
        if args.launcher == "submitit":
            config.writable_folder(args.submitit_folder, "--submitit_folder")
        from engine.trainer import Interrupted  # heavy imports only once the study is known to be valid
        from utils import study_report

        launch = None
        if args.launcher == "submitit":
            from engine.launcher import LaunchOptions

            launch = LaunchOptions.from_args(args)
        with StopOnSignal() as stop:
            try:
                outputs = run(study, stop=stop.requested, launch=launch)
            except Interrupted as interrupt:
                hint = "" if study.base.checkpoint else " (with checkpoint: true the interrupted trial resumes from its last.pt)"
                print(f"{interrupt}; rerun the same command to go on: finished cells and trials are kept{hint}",  # noqa: T201
                      file=sys.stderr)
                return EXIT_CODES.get(interrupt.signal_name, 130)
        if outputs is None:
            print(f"submitted {study.name}'s trials; rerun the command when they finish to write its tables")  # noqa: T201
            return 0
        table = study_report.markdown_table(outputs.table, study_info(study))
        # The command's final table, like main_multi_trials.py's summary.
        print(f"\n{study.name}: {len(study.cells)} cells\n{table}\n\nsummary: {outputs.summary}")  # noqa: T201
        return 0

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
