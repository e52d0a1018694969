"""Measurements of a trained model beyond its metrics: inference cost and surviving channels.

Sparsity only pays off when it shows in size, FLOPs and latency, so evaluation reports them
next to the metrics. They are measured on the dense architecture (zeroed channels still cost
time here); training never calls this module, since latency measurement is slow on a CPU.
"""

from __future__ import annotations

import statistics
import time
from types import MappingProxyType

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.runtime import autocast
from optim import sparsity
from utils.plots import LayerChannels

#: (warm-up, timed) forward passes per latency measurement; CPUs are slow, so fewer there.
REPEATS = MappingProxyType({"cpu": (1, 5), "cuda": (10, 30)})


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
    with FlopCounterMode(display=False) as counter:
        model(_images(1, image_size, device, channels_last=False))
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def latency_ms(
    model: nn.Module, image_size: tuple[int, int], device: torch.device, *,
    batch_size: int, amp: bool = False, channels_last: bool = False,
) -> float:
    """Median milliseconds per image of a forward pass at ``batch_size``, after warm-up."""
    model.eval()
    images = _images(batch_size, image_size, device, channels_last)
    warmup, timed = REPEATS["cuda" if device.type == "cuda" else "cpu"]
    times = []
    for step in range(warmup + timed):
        _synchronize(device)
        started = time.perf_counter()
        with autocast(device, amp):
            model(images)
        _synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times) / batch_size


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_cost(
    model: nn.Module, image_size: tuple[int, int], device: torch.device, *,
    batch_size: int, amp: bool = False, channels_last: bool = False,
) -> dict[str, float]:
    """Size, GFLOPs and latency at batch 1 and at ``batch_size``, as flat table columns."""
    cost = dense_size(model)
    cost["gflops"] = gflops_per_image(model, image_size, device)
    for size in dict.fromkeys((1, batch_size)):
        cost[f"latency_ms_batch{size}"] = latency_ms(
            model, image_size, device, batch_size=size, amp=amp, channels_last=channels_last)
    return cost


def surviving_channels(backbone: nn.Module) -> list[LayerChannels]:
    """Per conv weight of the backbone (module order), which input-channel groups ``W[:, j]`` are non-zero."""
    return [
        LayerChannels(name, (weight.detach() != 0).any(0).flatten(1).any(1).cpu().numpy())
        for name, weight in sparsity.conv_weights(backbone).items()
    ]
