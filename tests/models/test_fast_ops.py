"""The faster CPU ops give torch's own results: bitwise for the max-pool, within rounding elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from models.fast_ops import AtrousConv2d, StemMaxPool2d, live_taps, resize_bilinear


@settings(max_examples=60, deadline=None, database=None)  # no .hypothesis folder in the tree
@given(
    batch=st.integers(1, 3), channels=st.integers(1, 5), height=st.integers(1, 13), width=st.integers(1, 13),
    kernel=st.integers(1, 4), stride=st.integers(1, 3), seed=st.integers(0, 2**31), ties=st.booleans(),
    special_rate=st.sampled_from([0.0, 0.1, 0.5]), data=st.data(),
)
def test_stem_pool_is_bitwise_maxpool(batch: int, channels: int, height: int, width: int, kernel: int, stride: int,
                                      seed: int, ties: bool, special_rate: float, data: st.DataObject) -> None:
    padding = data.draw(st.integers(0, kernel // 2))
    if height + 2 * padding < kernel or width + 2 * padding < kernel:
        return  # no output: both raise (tested below)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen)
    if ties:  # a few distinct values: many equal maxima in a window
        x = x.mul(1.5).round()
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0])
    mask = torch.rand(x.shape, generator=gen) < special_rate
    x[mask] = specials[torch.randint(len(specials), (int(mask.sum()),), generator=gen)]
    expected = nn.MaxPool2d(kernel, stride, padding)(x)
    with torch.no_grad():
        got = StemMaxPool2d(kernel, stride, padding)(x)
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(0.0), expected.nan_to_num(0.0))


def test_stem_pool_keeps_maxpool_gradients_and_formats() -> None:
    x = torch.randn(2, 4, 9, 10).relu()  # ReLU zeros: ties, where the separable form would split gradients
    x.requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    StemMaxPool2d(3, 2, 1)(x).sum().backward()
    nn.MaxPool2d(3, 2, 1)(reference).sum().backward()
    assert torch.equal(x.grad, reference.grad)
    channels_last = x.detach().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(StemMaxPool2d(3, 2, 1)(channels_last), F.max_pool2d(channels_last, 3, 2, 1))


def test_stem_pool_refuses_what_maxpool_refuses() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError):
        StemMaxPool2d(3, 2, 0)(torch.randn(1, 1, 2, 2))


def test_stem_pool_exports_as_maxpool() -> None:
    """torch.export (what the ONNX export runs) sees torch's max-pool, not the two maxima."""
    with torch.no_grad():
        program = torch.export.export(nn.Sequential(StemMaxPool2d(3, 2, 1)).eval(), (torch.randn(1, 2, 8, 8),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("max_pool2d" in t for t in targets) and not any("maximum" in t for t in targets)


# The legacy tracer (torch.jit.trace, ONNX's dynamo=False exporter) is deprecated but still what some users run.
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace.*` is deprecated:FutureWarning")
def test_stem_pool_traces_as_maxpool() -> None:
    traced = torch.jit.trace(nn.Sequential(StemMaxPool2d(3, 2, 1)).eval(), torch.randn(1, 2, 8, 8))
    assert "aten::max_pool2d" in str(traced.inlined_graph) and "aten::maximum" not in str(traced.inlined_graph)


@pytest.mark.parametrize("channels", [1, 3, 40])
def test_resize_matches_torch_bilinear(channels: int) -> None:
    x = torch.randn(2, channels, 7, 9, requires_grad=True)
    ref = x.detach().clone().requires_grad_(True)
    got = resize_bilinear(x, (30, 41))
    expected = F.interpolate(ref, size=(30, 41), mode="bilinear", align_corners=False)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    grad = torch.randn(expected.shape)
    got.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("kernel", "dilation", "size"), [
    (3, 12, (12, 16)), (3, 24, (12, 16)), (3, 36, (32, 32)), (3, 2, (1, 5)), (5, 3, (7, 4)), (3, 1, (1, 1)), (3, 4, (12, 16)),
])
def test_atrous_conv_equals_the_full_conv(channels_last: bool, kernel: int, dilation: int, size: tuple[int, int]) -> None:
    """Float64 shows the trimming exact (only the order of a sum changes), in both layouts."""
    torch.manual_seed(kernel * 100 + dilation)
    dtype, tol = torch.float64, 1e-12
    pad = dilation * (kernel // 2)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = AtrousConv2d(6, 4, kernel, padding=pad, dilation=dilation, bias=True).to(dtype).to(memory_format=layout)
    x = torch.randn(2, 6, *size, dtype=dtype).contiguous(memory_format=layout).requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    got = conv(x)
    expected = F.conv2d(reference, weight, conv.bias, 1, pad, dilation)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    grad = torch.randn(expected.shape, dtype=dtype)
    got.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, reference.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=tol, atol=tol)  # skipped taps: zero in both


def test_live_taps_of_the_aspp_rates() -> None:
    shapes = {}
    for rate in (12, 24, 36):
        conv = AtrousConv2d(2, 2, 3, padding=rate, dilation=rate)
        shapes[rate] = [None if (t := live_taps(conv, size)) is None else (tuple(t[0].shape[-2:]), *t[1:])
                        for size in ((12, 16), (32, 32), (64, 64))]
    assert shapes == {  # kernel, padding, dilation (1 along a dimension left with one tap)
        12: [((1, 3), (0, 12), (1, 12)), None, None],
        24: [((1, 1), (0, 0), (1, 1)), None, None],
        36: [((1, 1), (0, 0), (1, 1)), ((1, 1), (0, 0), (1, 1)), None],
    }
    assert live_taps(AtrousConv2d(2, 2, 3, padding=1, stride=2), (1, 1)) is None  # strided: not trimmed
    assert live_taps(AtrousConv2d(2, 2, 3, padding=0, dilation=5), (2, 2)) is None  # not "same" padding


def test_atrous_conv_exports_the_full_kernel() -> None:
    """An export with dynamic sizes, captured on a small map, must not have baked in the trimmed 1x1 taps."""
    conv = AtrousConv2d(2, 2, 3, padding=36, dilation=36).eval()
    side = {2: torch.export.Dim("height", min=2, max=512), 3: torch.export.Dim("width", min=2, max=512)}
    program = torch.export.export(conv, (torch.randn(1, 2, 12, 16),), dynamic_shapes=(side,))
    x = torch.randn(1, 2, 80, 80)  # a size where every tap reads the map
    torch.testing.assert_close(program.module()(x), F.conv2d(x, conv.weight, conv.bias, 1, 36, 36))


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace.*` is deprecated:FutureWarning")
def test_atrous_conv_traces_the_full_kernel() -> None:
    conv = AtrousConv2d(2, 2, 3, padding=36, dilation=36).eval()
    traced = torch.jit.trace(conv, torch.randn(1, 2, 12, 16))
    x = torch.randn(1, 2, 80, 80)
    torch.testing.assert_close(traced(x), F.conv2d(x, conv.weight, conv.bias, 1, 36, 36))
