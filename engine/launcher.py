"""Many trials at once: every (λ or target, trial) of an experiment or sweep as its own job, through submitit.

``main_multi_trials.py --launcher submitit --cluster slurm`` submits one Slurm job array (one
job per trial of every experiment of the config); ``--cluster local`` runs the same jobs as
local processes through submitit's local executor. Each job trains one trial with
``checkpoint: true``: a job that is pre-empted or times out is requeued by submitit and goes on
from its trial's ``last.pt``. When every job has finished, the experiments' tables (and a
sweep's table, figure and best λ) are collected from the trial folders; with ``--no_wait`` the
command returns after submitting and ``get_outputs.py`` (or rerunning the same command, which
trains nothing already finished) collects later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import submitit

from engine import sweep, trials
from utils import config
from utils.config import ExperimentConfig
from utils.errors import ConfigError, DataError
from utils.logging import setup_console

log = logging.getLogger("gsmtl")

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


class TrialJob(submitit.helpers.Checkpointable):
    """One trial of one experiment, as a submitit job; requeued with the same arguments, it resumes."""

    def __call__(self, raw: dict[str, Any], trial: int) -> list[dict[str, Any]]:
        setup_console()  # the job's log shows the epochs, as the console would
        cfg = config.validate({**raw, "checkpoint": True}, source=f"job {raw.get('Experiment_name')} trial {trial}")
        return trials.run(cfg, trial=trial)


def experiments(cfg: ExperimentConfig) -> dict[float, ExperimentConfig] | None:
    """The experiments a config stands for: one per λ of a sweep, or None for the config itself."""
    return sweep.sweep_configs(cfg) if cfg.lambda_sweep or cfg.sparsity_sweep else None


def launch(cfg: ExperimentConfig, options: LaunchOptions, *, trial: int | None = None) -> pd.DataFrame | list[dict[str, Any]] | None:
    """Submit every trial of ``cfg`` (every λ of a sweep) as a job; collect the tables when they finish.

    Returns the sweep table or the experiment's finished rows, or None with ``wait=False``.
    """
    sweeps = experiments(cfg)
    configs = list(sweeps.values()) if sweeps is not None else [cfg]
    indices = [trial] if trial is not None else list(range(cfg.num_trials))
    if not run_jobs([(sub, index) for sub in configs for index in indices], options, name=cfg.Experiment_name):
        return None
    if sweeps is not None:
        return sweep.collect_sweep(cfg, sweeps)
    return trials.write_report(cfg)


def run_jobs(work: Sequence[tuple[ExperimentConfig, int]], options: LaunchOptions, *, name: str) -> bool:
    """Submit one job per (experiment, trial) as one array; with ``wait``, block until all end (True), else return False."""
    if not work:
        return True
    executor = _executor(name, options)
    jobs = executor.map_array(TrialJob(), [config.to_dict(cfg) for cfg, _ in work], [index for _, index in work])
    log.info("submitted %d job(s) to %s (%s): %s", len(jobs), options.cluster, options.folder,
             ", ".join(job.job_id for job in jobs[:8]) + (" ..." if len(jobs) > 8 else ""))
    if not options.wait:
        return False
    failed = _wait(jobs, [f"{cfg.Experiment_name} trial {index}" for cfg, index in work])
    if failed:
        log.error("%d job(s) failed: %s", len(failed), "; ".join(failed[:3]))
    return True


def _executor(name: str, options: LaunchOptions) -> submitit.AutoExecutor:
    try:
        executor = submitit.AutoExecutor(folder=str(options.folder / "%j"), cluster=options.cluster)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"--cluster {options.cluster}: no such submitit executor here ({error})") from None
    parameters: dict[str, Any] = {
        "name": name, "timeout_min": options.timeout_min, "gpus_per_node": options.gpus_per_trial,
        "tasks_per_node": 1, "cpus_per_task": options.cpus_per_trial,
    }
    if options.cluster == "slurm":
        parameters |= {"slurm_partition": options.partition, "slurm_array_parallelism": options.array_parallelism}
    executor.update_parameters(**parameters)
    return executor


def _wait(jobs: Sequence[submitit.Job], names: Sequence[str]) -> list[str]:
    """Block until every job ends; returns one line per failed job (its error's last line)."""
    failed = []
    for job, name in zip(jobs, names):
        try:
            job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            failed.append(f"{name} (job {job.job_id}): {reason}")
        except (ConfigError, DataError) as error:
            failed.append(f"{name} (job {job.job_id}): {error}")
    return failed
