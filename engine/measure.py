"""Measurements of a trained model beyond its metrics: inference cost and surviving channels.

Sparsity only pays off when it shows in size, FLOPs, memory and latency, so evaluation reports
them next to the metrics. :func:`inference_cost` measures the model as trained, where zeroed
channels still cost time, and with ``with_compact`` its compact form too
(:func:`models.compact.compact`), where what they made dead is gone. Training never calls this
module, since latency measurement is slow on a CPU.

Latency is the median of ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of runs
until ``MIN_RUN_TIME_S`` has passed, after a warm-up run) at the process's thread count; models
compared are timed in turn, ``PAIRED_ROUNDS`` rounds of ``PAIRED_ROUND_S`` each.
Peak activation memory is counted, not sampled: every tensor storage that an operator creates
during one forward pass is tracked until its last tensor dies, and the peak of their summed
bytes is reported. Inputs, parameters and buffers are not counted; kernel-internal scratch
buffers (e.g. a convolution's workspace) and allocator caching are invisible to it. It is the
memory the model's tensors need, comparable across models and devices.
"""

from __future__ import annotations

import statistics
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from engine.runtime import autocast
from models.compact import CompactModel, compact
from optim import sparsity
from utils.plots import LayerChannels

#: Seconds of timed runs per latency measurement (``blocked_autorange``'s ``min_run_time``).
MIN_RUN_TIME_S = 0.2
#: Rounds of an alternating comparison (:func:`alternating_seconds`) and the seconds of timed runs per run and round.
PAIRED_ROUNDS = 5
PAIRED_ROUND_S = 0.1


def dense_size(model: nn.Module) -> dict[str, float]:
    """Parameter count and the size of the state_dict (parameters and buffers) in MB (10^6 bytes)."""
    tensors = list(model.state_dict().values())
    return {
        "model_params": float(sum(p.numel() for p in model.parameters())),
        "model_size_mb": sum(t.numel() * t.element_size() for t in tensors) / 1e6,
    }


def _images(batch_size: int, image_size: tuple[int, int], device: torch.device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.randn(batch_size, 3, *image_size, device=device).contiguous(memory_format=memory_format)


@torch.inference_mode()
def gflops_per_image(model: nn.Module, image_size: tuple[int, int], device: torch.device) -> float:
    """GFLOPs of one forward pass on one image (every head); a multiply-add counts 2 FLOPs."""
    model.eval()
    return count_flops(model, _images(1, image_size, device, channels_last=False)) / 1e9


def count_flops(model: nn.Module, images: Tensor) -> int:
    """FLOPs of ``model(images)``, torch's count."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def median_seconds(
    run: Callable[[], Any], *, min_run_time: float | None = None, clock: Callable[[], float] | None = None,
) -> float:
    """Median seconds of one ``run()`` after one warm-up call, at the current torch thread count.

    ``Timer`` synchronises CUDA around each block; its own default of one thread would time
    a CPU model on a single core. ``min_run_time`` defaults to ``MIN_RUN_TIME_S``; ``clock``
    replaces the wall clock (``time.process_time`` counts only this process's CPU time:
    single-threaded runs on a shared machine).
    """
    from torch.utils.benchmark import Timer  # on use: importing it logs a CUDA-toolkit warning on machines without one

    run()
    timer = Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads(),
                  **({} if clock is None else {"timer": clock}))
    return timer.blocked_autorange(min_run_time=MIN_RUN_TIME_S if min_run_time is None else min_run_time).median


def alternating_seconds(
    runs: Sequence[Callable[[], Any]], *, rounds: int = PAIRED_ROUNDS, min_run_time: float = PAIRED_ROUND_S,
    clock: Callable[[], float] | None = None,
) -> list[list[float]]:
    """Per round, the median seconds of each of ``runs`` (:func:`median_seconds`), the runs timed in turn.

    Comparing models on a shared machine, a slow spell then hits every model of a round alike,
    where timing one model after the other lets it fall on one of them (seen here: the same
    model 4.7 ms in one measurement, 8.8 ms in the next).
    """
    return [[median_seconds(run, min_run_time=min_run_time, clock=clock) for run in runs] for _ in range(rounds)]


@torch.inference_mode()
def latencies_ms(
    models: Sequence[nn.Module], image_size: tuple[int, int], device: torch.device, *,
    batch_size: int, amp: bool = False, channels_last: bool = False,
) -> list[float]:
    """Median milliseconds per image of each model's forward pass at ``batch_size``.

    Several models are timed in turn (:func:`alternating_seconds`), so their figures compare.
    """
    images = _images(batch_size, image_size, device, channels_last)
    runs = []
    for model in models:
        model.eval()

        def forward(model: nn.Module = model) -> None:
            with autocast(device, amp):
                model(images)

        runs.append(forward)
    return median_ms(runs, per=batch_size)


def median_ms(runs: Sequence[Callable[[], Any]], *, per: int = 1) -> list[float]:
    """Median milliseconds of each run divided by ``per`` (images per run); several runs are timed in turn."""
    if len(runs) == 1:
        return [1000.0 * median_seconds(runs[0]) / per]
    return [1000.0 * statistics.median(times) / per for times in zip(*alternating_seconds(runs))]


class _LiveStorages(TorchDispatchMode):
    """Bytes of the storages created by operators and still referenced by a tensor, and their peak."""

    def __init__(self, external: list[Tensor]) -> None:
        super().__init__()
        self._skip = {t.untyped_storage().data_ptr() for t in external}
        self._refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._skip or storage.nbytes() == 0:
            return
        if key not in self._refs:
            self._refs[key] = 0
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1  # views and in-place results share the storage: counted once
        weakref.finalize(tensor, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes


@torch.inference_mode()
def peak_activation_mb(
    model: nn.Module, image_size: tuple[int, int], device: torch.device, *, batch_size: int = 1,
    amp: bool = False, channels_last: bool = False,
) -> float:
    """Peak MB (10^6 bytes) of live activations during one forward pass (see the module docstring).

    A compact model is measured in the memory layout it chose for these images (one forward
    outside the count makes the choice), and gets them in that layout: its conversion of them is
    a copy of the input, alive for the whole forward, not an activation.
    """
    model.eval()
    images = _images(batch_size, image_size, device, channels_last)
    if isinstance(model, CompactModel):
        with autocast(device, amp):
            model(images)
        images = images.contiguous(memory_format=model.layout)
    tracker = _LiveStorages([images, *model.parameters(), *model.buffers()])
    with tracker, autocast(device, amp):
        outputs = model(images)
    del outputs
    return tracker.peak / 1e6


def inference_cost(
    model: nn.Module, image_size: tuple[int, int], device: torch.device, *,
    batch_size: int, amp: bool = False, channels_last: bool = False, with_compact: bool = False,
) -> dict[str, float]:
    """Size, GFLOPs and latency at batch 1 and at ``batch_size``, as flat table columns.

    ``with_compact`` adds the cost of ``model``'s compact form and the peak activations (batch 1)
    of both: ``params_compact``, ``gflops_compact``, ``latency_compact_ms_batch1``,
    ``latency_compact_ms_batch<batch_size>``, ``peak_activation_mb`` and
    ``peak_activation_mb_compact``; the two models' latencies are then timed in turn.
    """
    cost = dense_size(model)
    cost["gflops"] = gflops_per_image(model, image_size, device)
    nets, extra = [model], {}
    if with_compact:
        small = compact(model)
        if channels_last:
            small = small.to(memory_format=torch.channels_last)
        nets.append(small)
        extra = {"params_compact": float(sum(p.numel() for p in small.parameters())),
                 "gflops_compact": gflops_per_image(small, image_size, device)}
    for size in dict.fromkeys((1, batch_size)):
        times = latencies_ms(nets, image_size, device, batch_size=size, amp=amp, channels_last=channels_last)
        cost[f"latency_ms_batch{size}"] = times[0]
        if with_compact:
            extra[f"latency_compact_ms_batch{size}"] = times[1]
    if with_compact:
        for key, net in (("peak_activation_mb", model), ("peak_activation_mb_compact", small)):
            extra[key] = peak_activation_mb(net, image_size, device, amp=amp, channels_last=channels_last)
    return cost | extra


def surviving_channels(backbone: nn.Module) -> list[LayerChannels]:
    """Per conv weight of the backbone (module order), which input-channel groups ``W[:, j]`` are non-zero."""
    return [
        LayerChannels(name, (weight.detach() != 0).any(0).flatten(1).any(1).cpu().numpy())
        for name, weight in sparsity.conv_weights(backbone).items()
    ]
