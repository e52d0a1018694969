"""Train ``num_trials`` trials of one YAML experiment, test the best checkpoints, write out_csv/<exp>.csv.

    python main_multi_trials.py --config_exp config/exp_single_mtl_NYU.yaml
    python main_multi_trials.py                      # the demo on built-in synthetic data
    python main_multi_trials.py --config_exp config/exp_gridsearch_single_mtl.yaml   # λ sweep (lambda_sweep key)

Ctrl-C or SIGTERM stops after the current step and saves last.pt; rerun with
--set checkpoint=true to continue exactly where it stopped.

Scaling out (README "Scaling out"):
    torchrun --nproc_per_node 4 main_multi_trials.py --config_exp config/exp_single_mtl_NYU.yaml
    python main_multi_trials.py --config_exp config/exp_gridsearch_single_mtl.yaml --launcher submitit \
        --cluster slurm --slurm_partition gpu --gpus_per_trial 1 --timeout_min 1440
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from utils import cli
from utils.cli import main_guard
from utils.config import DEFAULT_CONFIG, ExperimentConfig
from utils.errors import TrialsFailed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", default=DEFAULT_CONFIG,
                        help=f"experiment YAML file (default: {DEFAULT_CONFIG}, the synthetic demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for nested keys (e.g. --set bb_optimizer_params.lambda=1e-5); repeatable")
    parser.add_argument("--trial", type=int, default=None,
                        help="run only trial N (0-based), e.g. one job of a job array; the CSV collects finished trials")
    launch = parser.add_argument_group("many trials at once (submitit)")
    cli.add_launch_flags(launch, launcher_help="'submitit': every trial of the experiment (and every λ of a sweep) as its own job "
                         "(default: none, in this process)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from utils import config, report
        from utils.signals import EXIT_CODES, StopOnSignal

        cfg = config.load(args.config_exp, args.overrides)
        config.check_paths(cfg)
        if args.trial is not None:
            config.check_trial(cfg, args.trial)
        if args.launcher == "submitit":
            config.writable_folder(args.submitit_folder, "--submitit_folder")
        from engine import distributed, sweep, trials  # heavy imports only once the config is known to be valid
        from engine.trainer import Interrupted

        if args.launcher == "submitit":
            return _launch(cfg, args)
        context = distributed.from_environment()
        if not context.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # one console: rank 0's
        try:
            with StopOnSignal() as stop:
                try:
                    if sweep.is_sweep(cfg):
                        table = sweep.run_sweep(cfg, trial=args.trial, stop=stop.requested, context=context)
                        if context.is_main:
                            print(f"\n{cfg.Experiment_name}: {sweep.sweep_key(cfg)} sweep\n{sweep.format_sweep(cfg, table)}")
                        return 0
                    rows = trials.run(cfg, trial=args.trial, stop=stop.requested, context=context)
                except Interrupted as interrupt:
                    command = " ".join(["python", *map(shlex.quote, sys.argv), "--set", "checkpoint=true"])
                    if context.is_main:
                        print(f"{interrupt}; resume with: {command}", file=sys.stderr)
                    return EXIT_CODES.get(interrupt.signal_name, 130)
        finally:
            distributed.shutdown()
        if not context.is_main:
            return 0
        if not rows:  # trials.run raises for anything else: every trial failed
            raise TrialsFailed(no_trial_finished(cfg))
        print(f"\n{cfg.Experiment_name}\n{report.format_summary(rows)}")
        return 0

    return main_guard(body)


def _launch(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    """Submit the trials through submitit and print what came back."""
    from engine import launcher, sweep
    from utils import report

    options = launcher.LaunchOptions.from_args(args)
    outcome = launcher.launch(cfg, options, trial=args.trial)
    if not options.wait and outcome.jobs:  # with nothing to submit, the finished tables are there: print them
        print(f"submitted; when the jobs have ended, collect the tables with: python get_outputs.py --exp_name "
              f"{cfg.Experiment_name} (or run this command again: it submits only the trials that did not finish)")
        return 0
    swept = sweep.is_sweep(cfg)
    if swept and outcome.result is not None:
        print(f"\n{cfg.Experiment_name}: {sweep.sweep_key(cfg)} sweep\n{sweep.format_sweep(cfg, outcome.result)}")
    elif not swept and outcome.result:
        print(f"\n{cfg.Experiment_name}\n{report.format_summary(outcome.result)}")
    if outcome.failed:
        raise launcher.failure(outcome.failed, outcome.jobs, options.folder)
    if not swept and not outcome.result:  # a sweep with nothing finished raised in collect_sweep
        raise TrialsFailed(no_trial_finished(cfg))
    return 0


def no_trial_finished(cfg: ExperimentConfig) -> str:
    """The command's line when every trial of the experiment failed."""
    return f"no trial of {cfg.Experiment_name} finished; the reasons are in out_csv/{cfg.Experiment_name}_trials.csv"


if __name__ == "__main__":
    sys.exit(main())
