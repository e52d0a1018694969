"""Time one training step: this project's (backbone once per step) against the study's forward (once per task).

The study's ``MultiTaskModel.forward`` ran the shared backbone once for every task head; here it
runs once and every head reads its features (REFERENCE §8). Both steps below are the full
training step of a trial (forward, the task losses, uncertainty weighting, backward, ProxAdam
with the group-sparse prox), on the same model and batch; only the forward differs. The table
gives the median step time, images per second, their ratio, the first step's time (with
``--compile``: mostly the compilation), and the data loader's images per second on the same
config (decode-once cache, the trial's loader settings). The two steps are timed in turn, one
of each per round, and the speed-up is the median of the rounds' ratios.

Defaults: on CUDA the study's NYU 3-task model (ResNet-D-50, 256², batch 16, bf16 autocast and
channels-last when ``--amp``); on the CPU a scaled-down one (ResNet-D-50 at width 0.25, 96×128,
batch 8, 64-channel heads).

    python -m benchmarks.bench_train_step --device cpu
    python -m benchmarks.bench_train_step --device cuda --amp --channels-last [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import data
from engine.runtime import autocast, to_device
from engine.trial import build_trial, resolve
from utils import config
from utils.cli import int_at_least
from utils.errors import ConfigError
from utils.logging import setup_console

TASKS = ["segmentsemantic", "depth_euclidean", "surface_normal"]
GPU = {"backbone": "resnetd50", "backbone_width": 1.0, "head_channels": 256, "input_shape": 256, "train_batch_size": 16}
CPU = {"backbone": "resnetd50", "backbone_width": 0.25, "head_channels": 64, "input_shape": [96, 128], "train_batch_size": 8}


def experiment(root: Path, device: str, args: argparse.Namespace) -> config.ExperimentConfig:
    size = GPU if device == "cuda" else CPU
    shape = size["input_shape"]
    height, width = (shape, shape) if isinstance(shape, int) else shape
    return config.validate({
        "Experiment_name": "bench", "task_list": TASKS, "setup": "multitask", "group_sparsity": True,
        "bb_optimizer_params": {"learning_rate": 1e-4, "penalty": "l1_l2", "lambda": 1e-6},
        "data_dir_NYU": str(root / "nyud"), "synthetic": {"num_images": 4 * size["train_batch_size"] + 8, "height": height, "width": width},
        "device": device, "num_workers": args.workers, "amp": args.amp, "channels_last": args.channels_last,
        "compile": args.compile, "wandb": {"mode": "disabled"}, **size,
    })


def step_fn(trial, batch, *, per_task_backbone: bool) -> Callable[[], None]:
    """One training step on ``batch``; ``per_task_backbone`` recomputes the backbone for each head (the study)."""
    cfg, model, tasks = trial.cfg, trial.model, trial.tasks
    images, targets = to_device(batch, trial.device, cfg.channels_last)
    names = list(tasks)
    forward = torch.compile(model) if cfg.compile else model
    backbone = torch.compile(model.backbone) if cfg.compile else model.backbone
    heads = {name: torch.compile(model.heads[name]) if cfg.compile else model.heads[name] for name in names}

    def run() -> None:
        model.train()
        with autocast(trial.device, cfg.amp):
            if per_task_backbone:
                outputs = {name: heads[name](backbone(images)) for name in names}
                outputs = {name: torch.nn.functional.interpolate(out, size=images.shape[-2:], mode="bilinear",
                                                                 align_corners=False) for name, out in outputs.items()}
            else:
                outputs = forward(images)
        losses = {name: tasks[name].loss(tasks[name].predict(outputs[name].float()), targets[name]) for name in names}
        total = trial.weighting(losses, names)
        trial.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trial.optimizer.step()

    return run


def alternating_step_ms(runs: list[Callable[[], None]], device: torch.device, *, steps: int,
                        warmup: int) -> tuple[list[float], list[list[float]]]:
    """Each run's first step (with ``compile``: the compilation), then ``steps`` rounds timing one step of each
    run in turn, after ``warmup`` steps each (at least the first): a slow spell of a shared machine then
    falls on every variant of a round alike, not on one variant's whole measurement."""
    def timed(run: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return 1000 * (time.perf_counter() - started)

    firsts = [timed(run) for run in runs]
    for _ in range(max(warmup - 1, 0)):
        for run in runs:
            run()
    return firsts, [[timed(run) for run in runs] for _ in range(steps)]


def loader_images_per_second(trial, *, batches: int) -> float:
    loader = trial.loaders["train"]
    started, count = time.perf_counter(), 0
    for index, batch in enumerate(loader):
        count += batch["image"].shape[0]
        if index + 1 >= batches:
            break
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int_at_least(1), default=10, help="timed rounds, one step of each variant per round (medians reported)")
    parser.add_argument("--warmup", type=int_at_least(1), default=3, help="untimed steps per variant before the rounds (the first is reported)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers for the loader's images/s")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the prox step stays eager)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_console()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = resolve(experiment(Path(tmp), args.device, args))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        splits = data.build(cfg)
        runs = []
        for per_task in (False, True):
            trial = build_trial(cfg, splits, train=True, device=device)
            runs.append(step_fn(trial, next(iter(trial.loaders["train"])), per_task_backbone=per_task))
        firsts, rounds = alternating_step_ms(runs, device, steps=args.steps, warmup=args.warmup)
        loader = loader_images_per_second(build_trial(cfg, splits, train=True, device=device), batches=8)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shape = "x".join(map(str, cfg.image_size))
    print(f"\nTraining step, {cfg.backbone} (width {cfg.backbone_width}), 3 tasks, {shape}, batch {cfg.train_batch_size}, "
          f"{card}{', bf16' if cfg.amp else ''}{', channels-last' if cfg.channels_last else ''}{', compiled' if cfg.compile else ''}\n")
    print("| forward | median ms/step | images/s | × | first step s |\n|---|---|---|---|---|")
    medians = [statistics.median(times) for times in zip(*rounds)]
    ratios = [statistics.median(times[i] / times[0] for times in rounds) for i in range(len(runs))]  # per round, then median
    for label, ms, ratio, first in zip(("backbone once (this project)", "backbone per task (the study)"), medians, ratios, firsts):
        print(f"| {label} | {ms:.1f} | {cfg.train_batch_size * 1000 / ms:.1f} | {ratio:.2f} | {first / 1000:.1f} |")
    print(f"| data loader alone | | {loader:.0f} | | |")
    print(f"\nspeed-up of one backbone pass per step: {ratios[1]:.2f}x (median over {len(rounds)} rounds of one step each, in turn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
