"""Faster CPU forms of three ops whose torch kernels are slow on small NCHW inputs, same results.

Each keeps torch's own op under graph capture (tracing, ``torch.compile``, export, ONNX), so
exported and compiled models see the standard operator. Times are one thread of the 2-core CI
machine, ``torch.utils.benchmark`` medians:

- :class:`OneDNNConv2d`: torch sends small batch-1 inputs (≤ 20480 elements) to its native
  im2col and dilated kernels, up to 3× slower than oneDNN on a compact model's odd channel
  counts (3×3, dilation 2, 90 channels of 12×16: 312 µs native, 137 µs oneDNN).
- :class:`StemMaxPool2d`: torch's NCHW max-pool is a scalar loop per plane (3×3 stride 2 of
  32×48×64: 803 µs at batch 1, 6.1 ms at batch 8); taken as two separable maxima of strided
  views it is 140 µs / 760 µs, bitwise equal (a max is exact; NaN propagates in both). Used
  without autograd only: ``torch.maximum`` splits the gradient of ties where the pool picks one.
- :func:`resize_bilinear`: torch's NCHW bilinear upsample is a loop per plane, its channels-last
  kernel vectorises across channels (40 channels 12×16 → 96×128: 723 µs vs 133 µs at batch 1,
  10.3 ms vs 1.05 ms at batch 8; forward and backward at batch 8 24.9 ms vs 3.7 ms). The result
  is channels-last; its values match the NCHW kernel's within float rounding (≤ 5e-7 on N(0, 1)).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def graph_capture() -> bool:
    """Whether the forward is being traced, compiled or exported (these must see torch's standard ops)."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export())


class OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 forward runs through oneDNN when the kernel is larger than 1×1."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.kernel_size == (1, 1) or self.padding_mode != "zeros"
                or not torch.backends.mkldnn.is_available() or graph_capture()):
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)


def onednn_convs(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Conv2d`` inside replaced by a :class:`OneDNNConv2d` of the same shape (same state keys)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, OneDNNConv2d(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride, padding=child.padding,
                dilation=child.dilation, groups=child.groups, bias=child.bias is not None, padding_mode=child.padding_mode))
        else:
            onednn_convs(child)
    return module


class StemMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools contiguous CPU maps without autograd as separable maxima (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if (graph_capture() or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous()
                or (torch.is_grad_enabled() and x.requires_grad) or _pair(self.dilation) != (1, 1) or self.ceil_mode
                or self.return_indices):
            return super().forward(x)
        kernel, stride, padding = (_pair(v) for v in (self.kernel_size, self.stride or self.kernel_size, self.padding))
        sizes = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[-2:], kernel, stride, padding)]
        if min(sizes) < 1:
            return super().forward(x)  # torch's error
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=float("-inf"))
        for dim, k, s, n in zip((2, 3), kernel, stride, sizes):
            x = reduce(torch.maximum, (x.narrow(dim, t, s * (n - 1) + 1)[_steps(dim, s)] for t in range(k)))
        return x


def resize_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of an N×C×h×w map to ``size``; on the CPU channels-last (see above)."""
    if x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _steps(dim: int, step: int) -> tuple[slice, ...]:
    """Index taking every ``step``-th element along ``dim``."""
    return (slice(None),) * dim + (slice(None, None, step),)
