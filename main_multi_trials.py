"""Train ``num_trials`` trials of one YAML experiment, test the best checkpoints, write out_csv/<exp>.csv.

    python main_multi_trials.py --config_exp config/exp_single_mtl_NYU.yaml
    python main_multi_trials.py                      # the demo on built-in synthetic data
    python main_multi_trials.py --config_exp config/exp_gridsearch_single_mtl.yaml   # λ sweep (lambda_sweep key)

Ctrl-C or SIGTERM stops after the current step and saves last.pt; rerun with
--set checkpoint=true to continue exactly where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from utils.cli import main_guard
from utils.config import DEFAULT_CONFIG


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", default=DEFAULT_CONFIG,
                        help=f"experiment YAML file (default: {DEFAULT_CONFIG}, the synthetic demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for nested keys (e.g. --set bb_optimizer_params.lambda=1e-5); repeatable")
    parser.add_argument("--trial", type=int, default=None,
                        help="run only trial N (0-based), e.g. one job of a job array; the CSV collects finished trials")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from utils import config, report
        from utils.signals import EXIT_CODES, StopOnSignal

        cfg = config.load(args.config_exp, args.overrides)
        config.check_data_dir(cfg)
        from engine import sweep, trials  # heavy imports only once the config is known to be valid
        from engine.trainer import Interrupted

        with StopOnSignal() as stop:
            try:
                if cfg.lambda_sweep:
                    table = sweep.run_sweep(cfg, trial=args.trial, stop=stop.requested)
                    print(f"\n{cfg.Experiment_name}: λ sweep\n{sweep.format_sweep(cfg, table)}")
                    return 0
                rows = trials.run(cfg, trial=args.trial, stop=stop.requested)
            except Interrupted as interrupt:
                command = " ".join(["python", *map(shlex.quote, sys.argv), "--set", "checkpoint=true"])
                print(f"{interrupt}; resume with: {command}", file=sys.stderr)
                return EXIT_CODES.get(interrupt.signal_name, 130)
        if rows:
            print(f"\n{cfg.Experiment_name}\n{report.format_summary(rows)}")
        return 0

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
