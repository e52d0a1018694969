"""Sparsity measures on a hand-built module with known zero groups and filters; penalty values."""

import math

import pytest
import torch
from torch import nn

from models.heads import build_head
from optim.sparsity import head_input_sparsity, layer_table, penalty, summary, task_layer_table


def module() -> nn.Module:
    """conv1: 1 of 3 input groups zero; conv2: groups 0 and 3 zero, filter 2 zero (plus a Linear, ignored)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 1), nn.Flatten(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight[:, 1] = 0
        model[1].weight[:, [0, 3]] = 0
        model[1].weight[2] = 0
        model[3].weight.zero_()
    return model


def test_layer_table_counts_each_conv() -> None:
    table = layer_table(module()).set_index("layer")
    assert list(table.index) == ["0", "1"]
    assert table.loc["0", "shape"] == (4, 3, 3, 3)
    assert table.loc["0", ["zero_groups", "total_groups", "zero_filters", "total_filters"]].tolist() == [1, 3, 0, 4]
    assert table.loc["1", ["zero_groups", "total_groups", "zero_filters", "total_filters"]].tolist() == [2, 4, 1, 6]
    assert table.loc["0", "nonzero_params"] == 2 * 36 and table.loc["1", "nonzero_params"] == 2 * 6
    assert table.loc["1", "group_sparsity"] == pytest.approx(0.5)
    assert table.loc["1", "filter_sparsity"] == pytest.approx(1 / 6)
    assert table.loc["0", "param_sparsity"] == pytest.approx(1 / 3)


def test_summary_is_the_ratio_of_summed_counts() -> None:
    result = summary(module())
    assert result == pytest.approx({
        "group_sparsity": 3 / 7,
        "filter_sparsity": 1 / 10,
        "param_sparsity": 1 - (72 + 12) / (108 + 24),
        "zero_groups": 3, "total_groups": 7,
        "zero_filters": 1, "total_filters": 10,
        "nonzero_params": 84, "total_params": 132,
    })


def test_summary_needs_conv_weights() -> None:
    with pytest.raises(ValueError, match="no 4-D"):
        summary(nn.Linear(2, 2))


def test_penalty_values_and_zero_subgradient() -> None:
    model = module()
    convs = [model[0].weight, model[1].weight]
    norms = [w.detach().transpose(0, 1).flatten(1).norm(dim=1) for w in convs]
    sizes = [36, 6]
    lasso = sum(0.1 * math.sqrt(s) * n.sum() for s, n in zip(sizes, norms))
    assert penalty(model, lam=0.1).item() == pytest.approx(lasso.item())
    assert penalty(convs, lam=0.1, reweight=False).item() == pytest.approx(0.1 * sum(n.sum() for n in norms).item())
    gamma, lam = 2.0, 0.3
    mcp = 0.0
    for s, n in zip(sizes, norms):
        lam_g = lam * math.sqrt(s)
        mcp += torch.where(n <= gamma * lam_g, lam_g * n - n * n / (2 * gamma), gamma * lam_g**2 / 2).sum().item()
    assert penalty(model, penalty="group_mcp", lam=lam, gamma=gamma).item() == pytest.approx(mcp)
    penalty(model, lam=0.1).backward()
    assert torch.isfinite(model[1].weight.grad).all() and model[1].weight.grad[:, 0].abs().sum() == 0


def two_head_model() -> nn.Module:
    """A 1-conv backbone of 8 channels; head "seg" reads channels 2..7, head "male" all but channel 0."""
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False))
    model.backbone.out_channels = 8
    model.heads = nn.ModuleDict({"seg": build_head("dense", 8, 3, head_channels=4), "male": build_head("classification", 8, 1)})
    with torch.no_grad():
        for module in model.heads["seg"].modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == 8:
                module.weight[:, :2] = 0
        model.heads["seg"][0].convs[1][0].weight[:, 2:5] = 0  # one branch drops more: still read by the others
        model.heads["male"].features[0].weight[:, 0] = 0
    return model


def test_head_input_sparsity_counts_channels_no_input_layer_of_the_head_reads() -> None:
    assert head_input_sparsity(two_head_model()) == pytest.approx({"seg": 2 / 8, "male": 1 / 8})


def test_task_layer_table_has_shared_and_per_head_rows() -> None:
    table = task_layer_table(two_head_model())
    assert table["task"].tolist() == ["shared"] + ["seg"] * 5 + ["male"]
    assert table["layer"].tolist()[:3] == ["backbone.0", "heads.seg.0.convs.0.0", "heads.seg.0.convs.1.0"]
    rows = table.set_index("layer")
    assert rows.loc["heads.seg.0.convs.1.0", "zero_groups"] == 5 and rows.loc["heads.seg.0.convs.0.0", "zero_groups"] == 2
    assert rows.loc["heads.male.features.0", "group_sparsity"] == pytest.approx(1 / 8)
    assert list(table.columns[:3]) == ["task", "layer", "shape"]
