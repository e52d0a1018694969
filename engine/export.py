"""``python -m models.compact``: a trial's compact model, optionally in ONNX, and what it saves.

    python -m models.compact --exp_folder_path runs/demo_synthetic_trial_0
    python -m models.compact --exp_folder_path runs/demo_synthetic_trial_0 --checkpoint segmentsemantic_checkpoint.pt \\
        --out compact_seg.pt --onnx compact_seg.onnx

Rebuilds the trial's model from its folder, loads the checkpoint (default ``checkpoint.pt``),
removes what its zero groups make dead (:func:`models.compact.compact`) and writes the compact
model (spec + state_dict, read back by :func:`models.compact.load`; default
``<folder>/compact_<checkpoint>``). With ``--onnx`` it also writes the compact model as ONNX
(dynamic batch) and checks ONNX Runtime's outputs against PyTorch's. Prints parameters,
GFLOPs, peak activation memory and median latency (ms per image at batch 1 and at the trial's
``test_batch_size``; eager PyTorch, and ONNX Runtime with ``--onnx``; sparse and compact timed in
alternation, :func:`engine.measure.alternating_seconds`) before and after, and
the largest output difference per task relative to that task's largest output. Files are
written only when every difference is within 1e-4 (``TOLERANCE``); otherwise the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from engine import artifacts, measure
from engine.trial import build_trial
from models.compact import compact, save
from utils import cli
from utils.cli import main_guard
from utils.config import ExperimentConfig
from utils.errors import ConfigError, DataError
from utils.io import file_problem, write_bytes

#: Largest accepted output difference, relative to the largest output of the task.
TOLERANCE = 1e-4


def load_trial_model(folder: Path, checkpoint: str) -> tuple[ExperimentConfig, nn.Module]:
    """The trial's config and its model holding ``checkpoint``'s weights, on the CPU, in eval mode.

    The one place here that rebuilds a model from a trial folder (through the engine's trial
    seams; repoint it when they move).
    """
    if not folder.is_dir():
        raise DataError(f"trial folder '{folder}' not found; expected a folder written by main_multi_trials.py")
    cfg = artifacts.offline_config(folder)
    model = build_trial(cfg, device=torch.device("cpu")).model
    weights, _ = artifacts.read_weights(folder, checkpoint, cfg)
    broken = next((key for key, value in weights.items() if value.is_floating_point() and not value.isfinite().all()), None)
    if broken is not None:
        raise DataError(f"checkpoint '{folder / checkpoint}': '{broken}' holds NaN/Inf (a diverged run); "
                        "expected finite weights to compact")
    artifacts.load_weights(model, weights, source=folder / checkpoint)
    return cfg, model.eval()


class _Outputs(nn.Module):
    """A multi-task model as ONNX sees it: a tuple of outputs in task order."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[task] for task in self.tasks)


def onnx_bytes(model: nn.Module, tasks: Sequence[str], images: Tensor) -> bytes:
    """``model`` exported to ONNX (input ``images``, outputs named by task, dynamic batch size).

    The exporter's graph passes log every rewrite at INFO; they are held to warnings meanwhile.
    """
    wrapper = _Outputs(model, tasks).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        program = torch.onnx.export(wrapper, (images,), dynamo=True, input_names=["images"], output_names=list(tasks),
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return program.model_proto.SerializeToString()


def onnx_runner(data: bytes) -> Callable[[Tensor], list[np.ndarray]]:
    """An ONNX Runtime CPU session of ``data`` at torch's thread count, as ``images -> outputs``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images.numpy()})


def relative_difference(reference: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, float]:
    """Per task: max |reference − other| / max |reference|."""
    return {
        task: float((value - other[task]).abs().max() / value.abs().max().clamp_min(1e-12))
        for task, value in reference.items()
    }


def _latencies_ms(runs: tuple[Callable[[Tensor], object], Callable[[Tensor], object]], images: Tensor) -> list[float]:
    """Median ms per image of the sparse and the compact run on ``images``, timed in turn."""
    with torch.inference_mode():
        return measure.median_ms([lambda run=run: run(images) for run in runs], per=len(images))


def _row(name: str, before: float, after: float, fmt: str) -> list[str]:
    change = f"{100 * (after - before) / before:+.1f} %" if before else ""
    return [name, format(before, fmt), format(after, fmt), change]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def _writable_file(path: Path, flag: str) -> None:
    """Refuse, before the measuring, an output path that is a folder or whose folder cannot be made or written."""
    problem = file_problem(path)
    if problem is not None:
        raise ConfigError(f"{flag} '{path}' cannot be written: {problem}; expected a file name to write into")


def run(folder: Path, checkpoint: str, out: Path | None, onnx_path: Path | None) -> int:
    """Compact, compare, print, then write; 1 (nothing written) when an output differs by more than ``TOLERANCE``."""
    out = out if out is not None else folder / f"compact_{checkpoint}"
    # The output paths are checked before the minutes of measuring and exporting, not when writing.
    if folder.is_dir():  # a missing folder is load_trial_model's error, which names the command that writes one
        _writable_file(out, "--out")
    if onnx_path is not None:
        _writable_file(onnx_path, "--onnx")
    cfg, model = load_trial_model(folder, checkpoint)
    small = compact(model)
    device, size, batch = torch.device("cpu"), cfg.image_size, cfg.test_batch_size
    tasks = list(model.heads)
    images = torch.randn(batch, 3, *size)
    with torch.inference_mode():
        reference, compacted = model(images), small(images)
    differences = {"compact vs sparse model (eager)": relative_difference(reference, compacted)}
    rows = [["", "sparse", "compact", "change"]]
    rows.append(_row("parameters", sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters()), ",.0f"))
    rows.append(_row("GFLOPs / image", measure.gflops_per_image(model, size, device), measure.gflops_per_image(small, size, device), ".4f"))
    rows.append(_row("peak activations MB (batch 1)", measure.peak_activation_mb(model, size, device),
                     measure.peak_activation_mb(small, size, device), ".2f"))
    sizes = list(dict.fromkeys((1, batch)))
    for b in sizes:
        rows.append(_row(f"latency ms / image, eager, batch {b}", *_latencies_ms((model, small), images[:b]), ".3f"))
    data = None
    if onnx_path is not None:
        data = onnx_bytes(small, tasks, images)
        runner, dense_runner = onnx_runner(data), onnx_runner(onnx_bytes(model, tasks, images))
        outputs = dict(zip(tasks, map(torch.from_numpy, runner(images))))
        differences["ONNX Runtime vs compact model (eager)"] = relative_difference(compacted, outputs)
        for b in sizes:
            rows.append(_row(f"latency ms / image, ONNX Runtime, batch {b}", *_latencies_ms((dense_runner, runner), images[:b]),
                             ".3f"))
    print(f"{folder.name} ({checkpoint}), {size[0]}x{size[1]} images, {torch.get_num_threads()} CPU threads\n")
    print(_table(rows))
    print()
    for what, values in differences.items():
        print(f"max |difference| / max |output|, {what}: " + ", ".join(f"{task} {value:.2e}" for task, value in values.items()))
    worst = max(value for values in differences.values() for value in values.values())
    if not worst <= TOLERANCE:  # NaN included
        print(f"error: outputs differ by {worst:.2e} > {TOLERANCE:g} of their largest value; nothing written", file=sys.stderr)
        return 1
    save(small, out)
    if data is not None:
        try:
            write_bytes(onnx_path, data)
        except BaseException:
            out.unlink(missing_ok=True)  # both files or neither
            raise
    print(f"\nwrote {out}" + ("" if data is None else f" and {onnx_path}"))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m models.compact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_folder_path", required=True, type=cli.path_arg, help="the trial folder (holds config_file.yaml)")
    parser.add_argument("--checkpoint", default=artifacts.GLOBAL_CHECKPOINT,
                        help=f"checkpoint file in the folder (default: {artifacts.GLOBAL_CHECKPOINT}; or <task>_checkpoint.pt)")
    parser.add_argument("--out", type=cli.path_arg, default=None, help="compact model file (default: <folder>/compact_<checkpoint>)")
    parser.add_argument("--onnx", type=cli.path_arg, default=None, help="also write the compact model as ONNX and check it with ONNX Runtime")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args.exp_folder_path, args.checkpoint, args.out, args.onnx))
