"""Evaluate the saved trials of an experiment into out_csv/<exp>.csv (mean ± std) and <exp>_trials.csv.

    python get_outputs.py --exp_name 8_2_multi_seg_sn_depth_ --num_trials 5
    python get_outputs.py --exp_name runs/NYU/8_2_multi_seg_sn_depth_ --data_dir /data/NYUD_MT
    python get_outputs.py --exp_name 8_2_multi_seg_sn_depth_ \\
        --baseline out_csv/8_single_seg_trials.csv out_csv/8_single_depth_trials.csv out_csv/8_single_sn_trials.csv

Each trial is rebuilt from its config_file.yaml and tested with its best checkpoint(s); the
tables add backbone sparsity, model size, GFLOPs per image and latency, and Δm (%) against
single-task baselines when --baseline is given.
"""

from __future__ import annotations

import argparse
import sys

from utils.cli import main_guard


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_name", required=True,
                        help="experiment name as in the trial folders' names (trailing '_' optional), or a path ending in it")
    parser.add_argument("--num_trials", type=int, default=None, help="evaluate trials 0..N-1 (default: every trial found)")
    parser.add_argument("--runs_dir", default="runs", help="folder holding the trial folders, searched one level deep (default: runs)")
    parser.add_argument("--data_dir", default=None, help="dataset root, when it moved since training (default: the stored one)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default: test)")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="CSV",
                        help="single-task result CSVs (_trials.csv or summary); adds delta_m and delta_m_<task>")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default: auto)")
    parser.add_argument("--out_dir", default="out_csv", help="where the tables go (default: out_csv)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from engine.evaluate import evaluate_experiment
        from utils import report

        result = evaluate_experiment(
            args.exp_name, runs_dir=args.runs_dir, num_trials=args.num_trials, split=args.split,
            data_dir=args.data_dir, device=args.device, baselines=args.baseline, out_dir=args.out_dir,
        )
        print(f"\n{result.name} ({args.split})\n{report.format_summary(result.rows)}")
        print(f"\nwrote {result.summary_path} and {result.trials_path}")

    return main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
