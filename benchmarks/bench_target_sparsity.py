"""Ask for a sparsity, get it: one run per target on the synthetic set, against what a λ sweep needs.

For each target (default 0.3 / 0.5 / 0.7) one trial of the demo model is trained with
``target_group_sparsity``; the table shows the group sparsity measured at ``target_epoch`` and
at the end (both must be within ±2 points), the λ the controller settled on, and the largest
deviation after ``target_epoch``. For comparison, a λ sweep over five decades (the study's
method) is trained with the same budget and the table says which targets any swept λ hit.

    python -m benchmarks.bench_target_sparsity            # about 10 minutes on 2 CPU cores
    python -m benchmarks.bench_target_sparsity --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import pandas as pd

from engine import artifacts, trials
from engine.trial import resolve
from utils import config, io
from utils.logging import setup_console

TARGETS = (0.3, 0.5, 0.7)
LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def base_config(root: Path, *, epochs: int, batches: int) -> dict:
    raw = config.to_dict(config.load("config/demo_synthetic.yaml"))
    raw.update(
        checkpoint_folder=str(root / "runs"), data_dir_NYU=str(root / "nyud"), num_trials=1, epochs=epochs,
        max_batches_per_epoch=batches, earlystop_patience=epochs, task_earlystop_patience=epochs,
        sparsity_threshold=0, augmentation=False, wandb={"mode": "disabled"},
        synthetic={"num_images": 240, "height": 48, "width": 64, "seed": 0}, input_shape=[48, 64],
    )
    return raw


def history(cfg: config.ExperimentConfig) -> dict:
    return io.read_json(artifacts.trial_folder(cfg, 0) / artifacts.HISTORY_FILES[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batches", type=int, default=10, help="training batches per epoch")
    parser.add_argument("--quick", action="store_true", help="3 epochs of 4 batches, one target")
    parser.add_argument("--no-sweep", action="store_true", help="skip the λ-sweep comparison")
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.epochs, args.batches, args.no_sweep = args.targets[:1], 3, 4, True
    setup_console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = base_config(root, epochs=args.epochs, batches=args.batches)
        rows = []
        for target in args.targets:
            cfg = config.validate({**raw, "Experiment_name": f"target_{target:g}", "target_group_sparsity": target})
            trials.run(resolve(cfg), out_dir=root / "out")
            measured = history(cfg)["sparsity"]["group_sparsity"]
            lambdas = history(cfg)["lambda"]
            at = (cfg.target_epoch or math.ceil(cfg.epochs / 3)) - 1
            after = measured[at:]
            rows.append({
                "target %": 100 * target, "at target_epoch %": 100 * measured[at], "final %": 100 * measured[-1],
                "max |dev| after %": 100 * max(abs(v - target) for v in after), "final λ": lambdas[-1],
                "within ±2 pts": all(abs(v - target) <= 0.02 for v in after), "runs": 1,
            })
        table = pd.DataFrame(rows)
        print(f"\nTarget-sparsity mode: {args.epochs} epochs of {args.batches} batches, one run per target\n")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if not args.no_sweep:
            reached = []
            for lam in LAMBDAS:
                cfg = config.validate({**raw, "Experiment_name": f"lambda_{lam:g}",
                                       "bb_optimizer_params": {**raw["bb_optimizer_params"], "lambda": lam}})
                trials.run(resolve(cfg), out_dir=root / "out")
                reached.append({"λ": lam, "final %": 100 * history(cfg)["sparsity"]["group_sparsity"][-1]})
            sweep = pd.DataFrame(reached)
            hits = {t: any(abs(r - 100 * t) <= 2 for r in sweep["final %"]) for t in args.targets}
            print(f"\nλ sweep with the same budget ({len(LAMBDAS)} runs):\n")
            print(sweep.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
            print("\ntargets a swept λ reached within ±2 points: "
                  + ", ".join(f"{100 * t:.0f}% {'yes' if hit else 'no'}" for t, hit in hits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
