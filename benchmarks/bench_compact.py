"""Does sparsity pay? Train the demo model at several λ with both sparsity scopes, compact it, time it.

Each (λ, scope) model is trained from the same seed on the demo's synthetic NYUD set (the
values of ``config/demo_synthetic.yaml``, fewer images and epochs) by a short loop through the
public API: ``tasks.build``, ``models.build``, the proximal Adam on ``optim.param_groups`` with
``scope``, the plain sum of the task losses. Each model is then compacted
(:func:`models.compact.compact`) and measured against its sparse self on the CPU: backbone
group sparsity, mean head-input sparsity (channels a head no longer reads), the FLOP
reduction, the latency reduction at batch 1 and 8 (``torch.utils.benchmark``; sparse and
compact timed alternately in ``--rounds`` pairs, the median of the paired reductions taken;
with ``--onnx`` also in ONNX Runtime at batch 1; with ``--cuda``, the default when a GPU is
available, also on the GPU at batch 1 and 8, wall clock) and its ratio to the FLOP reduction.
λ = 0 is the dense reference: what compaction costs when there is nothing to remove. Trained
models are kept in ``--work`` and reused, so measuring again (``--size``, ``--onnx``) is quick.

    python -m benchmarks.bench_compact --quick                  # smoke run, about a minute
    python -m benchmarks.bench_compact --threads 1 --cpu-time   # the report's table, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import data
import models
import tasks as task_registry
from engine import export, measure
from engine.trial import resolve
from models.compact import compact
from optim import ProxAdam, sparsity
from optim.groups import SCOPES, param_groups
from utils import checkpoint as ckpt
from utils import config

DEMO = "config/demo_synthetic.yaml"
#: Seconds of timed runs per model and round.
ROUND_S = 0.1


def demo_config(work: Path, *, images: int, size: tuple[int, int]) -> config.ExperimentConfig:
    """The demo experiment on its own synthetic data under ``work``, one trial, no logging."""
    return resolve(config.load(DEMO, overrides=[
        f"data_dir_NYU={work / f'synthetic_nyud_{images}'}", f"synthetic.num_images={images}",
        f"synthetic.height={size[0]}", f"synthetic.width={size[1]}", f"input_shape=[{size[0]}, {size[1]}]",
        "num_trials=1", "wandb.mode=disabled", "augmentation=false",
    ]))


def train(cfg: config.ExperimentConfig, splits: data.Splits, *, lam: float, scope: str, epochs: int) -> nn.Module:
    """The demo model trained ``epochs`` epochs with the prox at ``lam`` on ``scope`` (seed ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    tasks = task_registry.build(cfg)
    model = models.build(cfg, {name: task.head_spec for name, task in tasks.items()})
    spec = cfg.optimizer_spec
    rates = spec.backbone.model_copy(update={"lambda_": lam})
    groups = param_groups(model, bb_params=rates, head_params=spec.head, group_sparsity=lam > 0, scope=scope)
    for group in groups:
        kind = spec.backbone_kind if group["name"].startswith("backbone") else spec.head_kind
        group["decoupled_weight_decay"] = kind == "adamw"
    optimizer = ProxAdam(groups)
    loader = data.loader(splits.train, batch_size=cfg.train_batch_size, shuffle=True, num_workers=0, seed=cfg.seed,
                         drop_last=True)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            outputs = model(batch["image"])
            loss = sum(task.loss(task.predict(outputs[name]), batch["targets"][name]) for name, task in tasks.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def trained(
    cfg: config.ExperimentConfig, splits: data.Splits, work: Path, *, lam: float, scope: str, epochs: int,
) -> nn.Module:
    """The model of (λ, scope, epochs, data), from ``work`` when it was trained before."""
    name = f"model_lambda{lam:g}_{scope.replace('+', '_')}_epochs{epochs}_images{cfg.synthetic.num_images}.pt"
    if (work / name).is_file():
        tasks = task_registry.build(cfg)
        model = models.build(cfg, {task: spec.head_spec for task, spec in tasks.items()})
        model.load_state_dict(ckpt.load(work / name)["model"])
        return model.eval()
    model = train(cfg, splits, lam=lam, scope=scope, epochs=epochs)
    ckpt.save({"model": model.state_dict()}, work / name)
    return model


def paired(runs: tuple[Callable[[], object], Callable[[], object]], rounds: int, clock: Callable[[], float] | None) -> tuple[float, float, float]:
    """Median seconds of both calls and the median of their paired reductions (1 − after / before).

    The two are timed alternately (:func:`engine.measure.alternating_seconds`), ``rounds``
    pairs of ``ROUND_S`` each, so a change in the machine's load hits both of a pair alike.
    """
    pairs = measure.alternating_seconds(runs, rounds=rounds, min_run_time=ROUND_S, clock=clock)
    reduction = statistics.median(1 - after / before for before, after in pairs)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs), reduction


@torch.inference_mode()
def row(
    model: nn.Module, *, lam: float, scope: str, size: tuple[int, int], rounds: int, clock: Callable[[], float] | None,
    onnx: bool, cuda: bool,
) -> dict[str, float | str]:
    """One table row: sparsity, FLOP and latency reductions (fractions) of the compact model; ms per image."""
    cpu = torch.device("cpu")
    small = compact(model)
    flops = measure.gflops_per_image(model, size, cpu), measure.gflops_per_image(small, size, cpu)
    heads = sparsity.head_input_sparsity(model)
    result: dict[str, float | str] = {
        "lambda": lam, "scope": scope,
        "group_sparsity": sparsity.summary(model.backbone)["group_sparsity"],
        "head_input_sparsity": statistics.mean(heads.values()),
        "gflops": flops[0], "flop_reduction": 1 - flops[1] / flops[0],
    }
    timed: dict[str, tuple[Callable[[], object], Callable[[], object], int]] = {}
    for batch in (1, 8):
        images = torch.randn(batch, 3, *size)
        timed[f"b{batch}"] = (lambda x=images: model(x), lambda x=images: small(x), batch)
    if onnx:
        images = torch.randn(1, 3, *size)
        sessions = [export.onnx_runner(export.onnx_bytes(net, list(net.heads), torch.randn(2, 3, *size))) for net in (model, small)]
        timed["ort_b1"] = (lambda x=images: sessions[0](x), lambda x=images: sessions[1](x), 1)
    if cuda:  # both models on the GPU (the compact one in its channels-last layout), wall clock: Timer synchronises
        gpu = torch.device("cuda")
        nets = copy.deepcopy(model).to(gpu), copy.deepcopy(small).to(gpu)
        for batch in (1, 8):
            images = torch.randn(batch, 3, *size, device=gpu)
            timed[f"gpu_b{batch}"] = (lambda x=images: nets[0](x), lambda x=images: nets[1](x), batch)
    for key, (before, after, batch) in timed.items():
        seconds = paired((before, after), rounds, None if key.startswith("gpu") else clock)
        result[f"ms_{key}"], result[f"ms_{key}_compact"] = (1000 * t / batch for t in seconds[:2])
        result[f"latency_reduction_{key}"] = seconds[2]
        result[f"ratio_{key}"] = seconds[2] / result["flop_reduction"] if flops[1] < flops[0] else float("nan")
    return result


COLUMNS = {  # header: (key, format); ratios are latency reduction / FLOP reduction
    "λ": ("lambda", "g"), "scope": ("scope", "s"), "group sp.": ("group_sparsity", ".1%"),
    "head-in sp.": ("head_input_sparsity", ".1%"), "GFLOPs": ("gflops", ".3f"), "FLOPs −": ("flop_reduction", ".1%"),
    "ms b1": ("ms_b1", ".2f"), "ms b1 c.": ("ms_b1_compact", ".2f"), "lat. − b1": ("latency_reduction_b1", ".1%"),
    "ratio b1": ("ratio_b1", ".2f"), "ms b8": ("ms_b8", ".2f"), "ms b8 c.": ("ms_b8_compact", ".2f"),
    "lat. − b8": ("latency_reduction_b8", ".1%"), "ratio b8": ("ratio_b8", ".2f"),
    "ORT ms b1": ("ms_ort_b1", ".2f"), "ORT c.": ("ms_ort_b1_compact", ".2f"), "ORT − b1": ("latency_reduction_ort_b1", ".1%"),
    "ORT ratio": ("ratio_ort_b1", ".2f"),
    **{f"GPU {name} b{b}": (f"{key}_gpu_b{b}{suffix}", fmt) for b in (1, 8) for name, key, suffix, fmt in (
        ("ms", "ms", "", ".2f"), ("c.", "ms", "_compact", ".2f"), ("−", "latency_reduction", "", ".1%"),
        ("ratio", "ratio", "", ".2f"))},
}


def format_rows(rows: list[dict[str, float | str]]) -> str:
    """The rows as a text table (ratios are nan where FLOPs did not drop)."""
    columns = {header: spec for header, spec in COLUMNS.items() if spec[0] in rows[0]}
    lines = [list(columns)] + [[format(r[key], fmt) for key, fmt in columns.values()] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(" | ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 λ, 1 epoch, 64 images, 2 timing rounds")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=160, help="synthetic images (train/val/test together)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing pairs per measurement")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="image size of the FLOP and latency measurement (default: the demo's 96 128)")
    parser.add_argument("--onnx", action="store_true", help="also time both models in ONNX Runtime at batch 1")
    parser.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                        help="also time both models on the GPU at batch 1 and 8 (default: when one is available)")
    parser.add_argument("--threads", type=int, default=None, help="torch (and ONNX Runtime) CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock (with --threads 1, on a busy machine)")
    parser.add_argument("--work", type=Path, default=Path(".cache/bench_compact"), help="data and trained models")
    args = parser.parse_args()
    if args.quick:
        args.lambdas, args.epochs, args.images, args.rounds = [0.0, 1e-2], 1, 64, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = demo_config(args.work, images=args.images, size=(96, 128))
    size = cfg.image_size if args.size is None else tuple(args.size)
    splits = data.build(cfg)
    rows = []
    for lam in args.lambdas:
        for scope in SCOPES if lam > 0 else SCOPES[:1]:
            model = trained(cfg, splits, args.work, lam=lam, scope=scope, epochs=args.epochs)
            rows.append(row(model, lam=lam, scope=scope, size=size, rounds=args.rounds,
                            clock=time.process_time if args.cpu_time else None, onnx=args.onnx, cuda=args.cuda))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{cfg.backbone} width {cfg.backbone_width}, head_channels {cfg.head_channels}, {len(cfg.task_list)} dense heads; "
          f"trained {args.epochs} epochs on {len(splits.train)} {cfg.image_size[0]}x{cfg.image_size[1]} images; measured at "
          f"{size[0]}x{size[1]}, {torch.get_num_threads()} CPU thread(s), {'CPU' if args.cpu_time else 'wall'} time, "
          f"ms per image; ratio = latency reduction / FLOP reduction\n")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
