"""Evaluate the saved trials of an experiment into out_csv/<exp_name>.csv (mean ± std) and <exp_name>_trials.csv.

    python get_outputs.py --exp_name 8_2_multi_seg_sn_depth_ --num_trials 5
    python get_outputs.py --exp_name runs/NYU/8_2_multi_seg_sn_depth_ --data_dir /data/NYUD_MT
    python get_outputs.py --exp_name 8_2_multi_seg_sn_depth_ --columns study
    python get_outputs.py --exp_name 8_2_multi_seg_sn_depth_ \\
        --baseline out_csv/8_single_seg_trials.csv out_csv/8_single_depth_trials.csv out_csv/8_single_sn_trials.csv

Trial folders <exp_name>_trial_<i> and <exp_name>trial_<i> are found with exp_name as typed
(trailing underscores included), in --runs_dir or, by default, in runs/ and in the
checkpoint_folder of every YAML file under config/ (so the study's commands work after
training with the study's files). Folders written by the study's own code evaluate too: their
checkpoints are read without running their pickled optimizer. Each trial is rebuilt from its
config_file.yaml and tested with its best checkpoint(s); the tables add backbone sparsity,
model size, GFLOPs per image and latency, and Δm (%) against single-task baselines when
--baseline is given. The table is out_csv/<exp_name>.csv with exp_name as typed, or
<exp_name>_eval.csv when that name is the training table's.
"""

from __future__ import annotations

import argparse
import sys

from utils import cli
from utils.cli import main_guard


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_name", required=True,
                        help="experiment name as in the trial folders' names (as typed; trailing '_' kept), or a path ending in it")
    parser.add_argument("--num_trials", type=cli.int_at_least(1), default=None, help="evaluate trials 0..N-1 (default: every trial found)")
    parser.add_argument("--runs_dir", action="append", type=cli.path_arg, default=None, metavar="DIR",
                        help="folder holding the trial folders, searched one level deep; repeatable "
                             "(default: runs/ and the checkpoint_folder of every YAML under config/)")
    parser.add_argument("--data_dir", type=cli.path_arg, default=None, help="dataset root, when it moved since training (default: the stored one)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default: test)")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="CSV",
                        help="single-task <exp>_trials.csv tables; adds delta_m and delta_m_<task> (%%)")
    parser.add_argument("--columns", choices=("ours", "study"), default="ours",
                        help="'study' also writes <exp_name>_study.csv in the study's column names, units (%%) and order")
    parser.add_argument("--checkpoints", choices=("per_task", "global"), default="per_task",
                        help="test each task with its own best checkpoint (default) or every task with checkpoint.pt (the study's NYU script)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default: auto)")
    parser.add_argument("--out_dir", type=cli.path_arg, default="out_csv", help="where the tables go (default: out_csv)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from engine import artifacts
        from engine.evaluate import evaluate_experiment
        from utils import report

        runs_dirs = args.runs_dir or artifacts.default_runs_dirs()
        result = evaluate_experiment(
            args.exp_name, runs_dirs=runs_dirs, num_trials=args.num_trials, split=args.split,
            data_dir=args.data_dir, device=args.device, baselines=args.baseline, out_dir=args.out_dir,
            columns=args.columns, per_task=args.checkpoints == "per_task",
        )
        print(f"\n{result.name} ({args.split})\n{report.format_summary(result.rows)}")
        written = [result.summary_path, result.trials_path] + ([result.study_path] if result.study_path else [])
        print("\nwrote " + ", ".join(map(str, written)))

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
