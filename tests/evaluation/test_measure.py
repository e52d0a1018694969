"""Inference cost and channel survival of a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import measure


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(images)}


def test_flops_size_and_latency_of_one_conv() -> None:
    net = Net()
    cost = measure.inference_cost(net, (8, 8), torch.device("cpu"), batch_size=2)
    assert cost["gflops"] == pytest.approx(2 * 4 * 3 * 9 * 64 / 1e9)  # 2 FLOPs per multiply-add
    assert cost["model_params"] == 108 and cost["model_size_mb"] == pytest.approx(108 * 4 / 1e6)
    assert cost["latency_ms_batch1"] > 0 and cost["latency_ms_batch2"] > 0


def test_surviving_channels_follow_zeroed_input_groups() -> None:
    net = Net()
    with torch.no_grad():
        net.conv.weight[:, 1] = 0
    (layer,) = measure.surviving_channels(net)
    assert layer.name == "conv" and layer.alive.tolist() == [True, False, True]
