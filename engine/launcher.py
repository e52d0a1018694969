"""Many trials at once: every (λ or target, trial) of an experiment or sweep as its own job, through submitit.

``main_multi_trials.py --launcher submitit --cluster slurm`` submits one Slurm job array (one
job per trial of every experiment of the config); ``--cluster local`` runs the same jobs as
local processes through submitit's local executor. Each job trains one trial with
``checkpoint: true``: a job that is pre-empted or times out is requeued by submitit and goes on
from its trial's ``last.pt``. When every job has finished, the experiments' tables (and a
sweep's table, figure and best λ) are collected from the trial folders; with ``--no_wait`` the
command returns after submitting and ``get_outputs.py`` (or rerunning the same command) collects
later. Only trials that have not finished with the same config are submitted (:func:`unfinished`),
after their data passed the pre-flight here (:func:`check_data`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import submitit

import data
from engine import artifacts, sweep, trials
from engine.trial import resolve
from utils import config
from utils.config import ExperimentConfig
from utils.errors import ConfigError, TrialsFailed
from utils.logging import setup_console

log = logging.getLogger("gsmtl")

PROJECT = Path(__file__).resolve().parents[1]  # the folder the jobs import engine/, data/, ... from

Cluster = Literal["local", "slurm"]


@dataclass(frozen=True)
class LaunchOptions:
    """Where and how the jobs run (``main_multi_trials.py --launcher submitit`` flags)."""

    cluster: Cluster = "local"
    folder: Path = Path("submitit_logs")
    partition: str | None = None
    gpus_per_trial: int = 0
    cpus_per_trial: int | None = None
    timeout_min: int = 60 * 24
    array_parallelism: int = 64
    wait: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchOptions:
        """The options the submitit flags gave (``utils.cli.add_launch_flags``)."""
        return cls(cluster=args.cluster, folder=args.submitit_folder, partition=args.slurm_partition,
                   gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, timeout_min=args.timeout_min,
                   array_parallelism=args.array_parallelism, wait=not args.no_wait)


class TrialJob(submitit.helpers.Checkpointable):
    """One trial of one experiment, as a submitit job; requeued with the same arguments, it resumes."""

    def __call__(self, raw: dict[str, Any], trial: int, out_dir: str = "out_csv") -> list[dict[str, Any]]:
        setup_console()  # the job's log shows the epochs, as the console would
        cfg = config.validate({**raw, "checkpoint": True}, source=f"job {raw.get('Experiment_name')} trial {trial}")
        return trials.run(cfg, trial=trial, out_dir=out_dir)


def experiments(cfg: ExperimentConfig) -> dict[float, ExperimentConfig] | None:
    """The experiments a config stands for: one per λ of a sweep, or None for the config itself."""
    return sweep.sweep_configs(cfg) if sweep.is_sweep(cfg) else None


@dataclass(frozen=True)
class Launched:
    """What came back: the sweep table or the experiment's finished rows (None: not waited for, or
    nothing finished), one line per failed job, and how many jobs there were."""

    result: pd.DataFrame | list[dict[str, Any]] | None
    failed: list[str]
    jobs: int


def launch(cfg: ExperimentConfig, options: LaunchOptions, *, trial: int | None = None) -> Launched:
    """Submit every trial of ``cfg`` (every λ of a sweep) as a job; collect the tables when they finish."""
    sweeps = experiments(cfg)
    configs = list(sweeps.values()) if sweeps is not None else [cfg]
    indices = [trial] if trial is not None else list(range(cfg.num_trials))
    work = unfinished([(sub, index) for sub in configs for index in indices])
    failed = run_jobs(work, options, name=cfg.Experiment_name)
    if failed is None:
        return Launched(None, [], len(work))
    try:
        result = sweep.collect_sweep(cfg, sweeps) if sweeps is not None else trials.write_report(cfg)
    except TrialsFailed:
        if not failed:
            raise
        result = None  # nothing finished because the jobs failed: the command reports the jobs
    return Launched(result, failed, len(work))


def unfinished(work: Sequence[tuple[ExperimentConfig, int]]) -> list[tuple[ExperimentConfig, int]]:
    """The (experiment, trial) pairs whose trial has not finished with this config: what a (re)run submits."""
    resolved = [(resolve(cfg), index) for cfg, index in work]
    todo = [(cfg, index) for cfg, index in resolved if not artifacts.is_finished(artifacts.trial_folder(cfg, index), cfg)]
    if len(todo) < len(work):
        log.info("%d of %d trial(s) finished before; not submitted again", len(work) - len(todo), len(work))
    return todo


def failure(failed: Sequence[str], jobs: int, folder: Path) -> TrialsFailed:
    """The command's one line about the failed jobs (``failed``: :func:`run_jobs`' lines)."""
    return TrialsFailed(f"{len(failed)} of {jobs} job(s) failed, first {failed[0]}; every job's logs are in "
                        f"{folder}/<job id>/; rerun the command to resubmit the unfinished trials")


def run_jobs(work: Sequence[tuple[ExperimentConfig, int]], options: LaunchOptions, *, name: str,
             out_dir: str | Path = "out_csv") -> list[str] | None:
    """Submit one job per (experiment, trial) as one array (each writes its experiment's tables
    to ``out_dir``); with ``wait``, block until all end and return one line per failed job (each
    also logged), else return None."""
    if not work:
        return []
    check_data(cfg for cfg, _ in work)
    jobs = executor(name, options).map_array(TrialJob(), [config.to_dict(cfg) for cfg, _ in work],
                                             [index for _, index in work], [str(out_dir)] * len(work))
    log.info("submitted %d job(s) to %s (%s): %s", len(jobs), options.cluster, options.folder,
             ", ".join(job.job_id for job in jobs[:8]) + (" ..." if len(jobs) > 8 else ""))
    if not options.wait:
        return None
    failed = []
    for job, (cfg, index) in zip(jobs, work):
        try:
            job.result()
        except submitit.core.utils.UncompletedJobError as error:  # FailedJobError included
            failed.append(f"{cfg.Experiment_name} trial {index} (job {job.job_id}): {_reason(error)}")
            log.error("%s; its log: %s", failed[-1], job.paths.stderr)
    if options.cluster == "local":  # submitit's local controller makes its folder before it substitutes %j
        with contextlib.suppress(OSError):  # not empty: not that folder's
            (options.folder / "%j").rmdir()
    return failed


def check_data(configs: Iterable[ExperimentConfig]) -> None:
    """Each distinct dataset of the jobs checked here, once, before anything is submitted (``data.check``:
    a synthetic set is generated here, not raced for by the jobs): a broken folder is one line now,
    not a failure of every job after it waited in the queue."""
    for cfg in {data.data_key(cfg): cfg for cfg in configs}.values():
        data.check(cfg)


def executor(name: str, options: LaunchOptions) -> submitit.AutoExecutor:
    """The submitit executor of the jobs; each job's Python imports this project from where this one does."""
    try:
        auto = submitit.AutoExecutor(folder=str(options.folder / "%j"), cluster=options.cluster)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"--cluster {options.cluster}: no such submitit executor here ({error})") from None
    # The job runs `python -m submitit.core._submit`, whose sys.path holds its working folder, not
    # this project (unless it is pip-installed): the project's folder goes first on PYTHONPATH.
    pythonpath = f"export PYTHONPATH={shlex.quote(str(PROJECT))}${{PYTHONPATH:+:$PYTHONPATH}}"
    parameters: dict[str, Any] = {
        "name": name, "timeout_min": options.timeout_min, "gpus_per_node": options.gpus_per_trial,
        "tasks_per_node": 1, "cpus_per_task": options.cpus_per_trial, f"{options.cluster}_setup": [pythonpath],
    }
    if options.cluster == "slurm":
        parameters |= {"slurm_partition": options.partition, "slurm_array_parallelism": options.array_parallelism}
    auto.update_parameters(**parameters)
    return auto


def _reason(error: Exception) -> str:
    """The job's exception on one line: the last line of the traceback a FailedJobError holds between
    dashed rules (after them come the log paths), else the error's last line (a killed or timed-out job)."""
    text = str(error)
    parts = text.split("----------------------\n")
    if isinstance(error, submitit.core.utils.FailedJobError) and len(parts) >= 3:
        text = parts[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return re.sub(r"^(\w+\.)+(?=\w+: )", "", lines[-1]) if lines else type(error).__name__  # utils.errors.DataError: -> DataError:
