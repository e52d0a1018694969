"""Faster forms of standard ops with the same results, for the slow cases of torch's kernels.

Each falls back to torch's own op under graph capture (tracing, ``torch.compile``, export,
ONNX), so exported and compiled models see the standard operator. Times are one thread of the
2-core CI machine, ``torch.utils.benchmark`` medians:

- :class:`AtrousConv2d`: a "same"-padded stride-1 conv whose dilation reaches past the map
  skips the kernel taps that can only read zero padding (exact: they multiply zeros). DeepLab's
  ASPP rates 12/24/36 on the 12×16 maps of a 96×128 input leave 1×3, 1×1 and 1×1 of the 3×3
  taps; on the study's 32×32 maps (256² input) rate 36 leaves 1×1. Gradients of the skipped
  taps are zero, as they are in the full conv. Along a dimension left with one tap the
  conv runs undilated (the same sums): 128 → 32 channels of 12×16 dilated 24 take 39 µs, undilated 14 µs.
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

from collections.abc import Callable, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init


def graph_capture() -> bool:
    """Whether the forward is being traced, compiled or exported (these must see torch's standard ops)."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export())


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` that leaves out the taps reading only zero padding (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        taps = None if graph_capture() else live_taps(self, x.shape[-2:])
        if taps is None:
            return super().forward(x)
        return F.conv2d(x, *taps[:1], self.bias, self.stride, *taps[1:], self.groups)


def live_taps(conv: nn.Conv2d, size: Sequence[int]) -> tuple[Tensor, tuple[int, int], tuple[int, int]] | None:
    """The weight's taps that can read a ``size`` map inside its borders, their padding and dilation; None if all can.

    Only "same"-padded (padding = dilation · (k − 1)/2, odd k), stride-1, zero-padded convs are
    trimmed: tap t (centre c) reads offset (t − c)·dilation, inside a map of n pixels for some
    output pixel iff |t − c|·dilation < n. Where one tap is left the dilation is 1: the same
    conv, which torch runs 3× faster than a 1×1 conv dilated 24.
    """
    if conv.padding_mode != "zeros" or conv.stride != (1, 1) or isinstance(conv.padding, str):
        return None
    halves = []
    for k, d, p, n in zip(conv.kernel_size, conv.dilation, conv.padding, size):
        if k % 2 == 0 or p != d * (k // 2):
            return None
        halves.append(min(k // 2, (int(n) - 1) // d))
    (kh, kw), (hh, hw) = conv.kernel_size, halves
    if (hh, hw) == (kh // 2, kw // 2):
        return None
    weight = conv.weight[:, :, kh // 2 - hh : kh // 2 + hh + 1, kw // 2 - hw : kw // 2 + hw + 1]
    dilation = tuple(d if half else 1 for d, half in zip(conv.dilation, (hh, hw)))
    return weight, (hh * conv.dilation[0], hw * conv.dilation[1]), dilation


def atrous_convs(module: nn.Module) -> nn.Module:
    """``module`` with every dilated ``nn.Conv2d`` inside an :class:`AtrousConv2d` holding the same parameters."""
    return _swap_convs(module, AtrousConv2d, lambda conv: type(conv) is nn.Conv2d and any(d > 1 for d in conv.dilation))


def _swap_convs(module: nn.Module, kind: type[nn.Conv2d], wanted: Callable[[nn.Module], bool]) -> nn.Module:
    """``module`` with each ``wanted`` child (recursively) replaced by a ``kind`` of the same shape.

    The parameters are moved, not re-initialised, so building a model draws the same random
    numbers and state-dict keys stay those of the replaced conv.
    """
    for name, child in module.named_children():
        if wanted(child):
            swapped = skip_init(kind, child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                padding=child.padding, dilation=child.dilation, groups=child.groups,
                                bias=child.bias is not None, padding_mode=child.padding_mode)
            swapped.weight, swapped.bias = child.weight, child.bias
            setattr(module, name, swapped)
        else:
            _swap_convs(child, kind, wanted)
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
