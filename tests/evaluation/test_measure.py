"""Inference cost and channel survival of a model."""

from __future__ import annotations

import itertools

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


class Chain(nn.Module):
    """conv (4 channels) -> in-place ReLU -> 1x1 conv (8 channels): two live activations at most."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(4, 8, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(images)}


def test_peak_activation_counts_live_tensors_once() -> None:
    # The in-place ReLU reuses the first conv's output; both outputs are alive at the second conv's end.
    peak = measure.peak_activation_mb(Chain(), (10, 10), torch.device("cpu"), batch_size=2)
    assert peak * 1e6 == pytest.approx(2 * (4 + 8) * 100 * 4)


def test_median_seconds_times_the_callable() -> None:
    calls = []
    seconds = measure.median_seconds(lambda: calls.append(1), min_run_time=0.01)
    assert 0 < seconds < 1e-3 and len(calls) > 1


def test_alternating_seconds_times_the_runs_in_turn_each_round() -> None:
    """A slow spell must hit both models of a comparison: the runs take turns, round after round."""
    log: list[str] = []
    rounds = measure.alternating_seconds([lambda: log.append("a"), lambda: log.append("b")], rounds=3, min_run_time=0.005)
    assert len(rounds) == 3 and all(len(row) == 2 and min(row) > 0 for row in rounds)
    assert [tag for tag, _ in itertools.groupby(log)] == ["a", "b"] * 3


def test_inference_cost_with_the_compact_model_columns() -> None:
    from models.backbones import build_backbone
    from models.heads import build_head
    from models.multitask import MultiTaskModel

    backbone = build_backbone("resnetd18", width=0.125)
    model = MultiTaskModel(backbone, nn.ModuleDict({"depth": build_head("dense", backbone.out_channels, 1, head_channels=8)}))
    with torch.no_grad():
        for weight in backbone.parameters():
            if weight.ndim == 4 and weight.shape[1] > 3:
                weight[:, ::2] = 0
    cpu = torch.device("cpu")
    cost = measure.inference_cost(model, (32, 32), cpu, batch_size=2, with_compact=True)
    dense = measure.inference_cost(model, (32, 32), cpu, batch_size=2)
    assert set(cost) - set(dense) == {"params_compact", "gflops_compact", "latency_compact_ms_batch1",
                                      "latency_compact_ms_batch2", "peak_activation_mb", "peak_activation_mb_compact"}
    assert cost["params_compact"] < dense["model_params"] and cost["gflops_compact"] < dense["gflops"]
    assert cost["latency_compact_ms_batch1"] > 0 and 0 < cost["peak_activation_mb_compact"] <= cost["peak_activation_mb"]
