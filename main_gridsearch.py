"""The study's λ grid search: train the experiment once per λ and record the best λ.

    python main_gridsearch.py --config_exp config/exp_gridsearch_single_mtl.yaml

With ``bb_optimizer_params.lambda: None`` (the study's file) the study's list is trained,
λ ∈ [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]; a ``lambda_sweep`` key gives another list. Each λ is
the experiment ``<Experiment_name>_lambda_<λ>`` with its own trial folders and tables; the
sweep writes out_csv/<Experiment_name>_sweep.csv and _sweep.png, and the best λ (among those
whose group sparsity lies in best_lambda_band, default 25–80 %, the best validation Δm
against the smallest λ) to out_csv/<Experiment_name>_best_lambda.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from utils import cli
from utils.cli import main_guard


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", required=True, help="experiment YAML file (the study's exp_gridsearch_single_mtl.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for nested keys; repeatable")
    parser.add_argument("--trial", type=int, default=None, help="run only trial N of every λ (e.g. one job of a job array)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from utils import config
        from utils.signals import EXIT_CODES, StopOnSignal

        cfg = config.load(args.config_exp, [*args.overrides, *_study_grid(args.config_exp, args.overrides)])
        config.check_paths(cfg)
        from engine import sweep
        from engine.trainer import Interrupted

        with StopOnSignal() as stop:
            try:
                table = sweep.run_sweep(cfg, trial=args.trial, stop=stop.requested)
            except Interrupted as interrupt:
                command = " ".join(["python", *map(shlex.quote, sys.argv), "--set", "checkpoint=true"])
                print(f"{interrupt}; resume with: {command}", file=sys.stderr)
                return EXIT_CODES.get(interrupt.signal_name, 130)
        print(f"\n{cfg.Experiment_name}: λ grid search\n{sweep.format_sweep(cfg, table)}")
        return 0

    return main_guard(body)


def _study_grid(path: str, overrides: list[str]) -> list[str]:
    """``lambda_sweep`` = the study's λ list when the file gives no λ and no sweep (its ``lambda: None``)."""
    from pathlib import Path

    from utils import config, yaml_io
    from utils.config import STUDY_LAMBDA_GRID

    raw = yaml_io.read(Path(path)) if Path(path).is_file() else {}
    given = any(o.split("=", 1)[0].strip() in ("lambda_sweep", "bb_optimizer_params.lambda") for o in overrides)
    params = (raw.get("bb_optimizer_params") or {}) if isinstance(raw, dict) else None
    if given or not isinstance(params, dict) or raw.get("lambda_sweep") or config.none_spelling(params.get("lambda")) is not None:
        return []  # a file without the study's `lambda: None` (or a malformed one, which validation reports)
    return [f"lambda_sweep=[{', '.join(map(str, STUDY_LAMBDA_GRID))}]"]


if __name__ == "__main__":
    sys.exit(main())
