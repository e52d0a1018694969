"""optim.groups: the head layers that read the backbone, and the "head_inputs" proximal group."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models.heads import build_head
from optim import ProxAdam
from optim.groups import head_input_layers, param_groups
from utils.errors import ConfigError

CHANNELS = 16


def rates(lr: float, lam: float, **extra: object) -> SimpleNamespace:
    fields = dict(learning_rate=lr, betas=(0.9, 0.99), weight_decay=0.0, penalty="l1_l2", lambda_=lam, gamma=3.0,
                  momentum=0.9, eps=1e-8)
    return SimpleNamespace(**{**fields, **extra})


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, CHANNELS, 3, padding=1, bias=False), nn.BatchNorm2d(CHANNELS), nn.ReLU())
        self.backbone.out_channels = CHANNELS
        self.heads = nn.ModuleDict({
            "seg": build_head("dense", CHANNELS, 3, head_channels=8),
            "male": build_head("classification", CHANNELS, 1),
        })


def by_name(groups: list[dict]) -> dict:
    return {group["name"]: group for group in groups}


def test_head_input_layers_are_the_layers_reading_the_features() -> None:
    dense = build_head("dense", CHANNELS, 3, head_channels=8).train()
    names = [name for name, _ in head_input_layers(dense, CHANNELS)]
    # The 1x1 branch, three atrous branches and the image-pooling branch's conv (after its average pool).
    assert names == ["0.convs.0.0", "0.convs.1.0", "0.convs.2.0", "0.convs.3.0", "0.convs.4.1"]
    assert dense.training and all(m.training for m in dense.modules())  # the trace restores the modes
    classification = build_head("classification", CHANNELS, 1)
    assert [name for name, _ in head_input_layers(classification, CHANNELS)] == ["features.0"]


def test_default_scope_keeps_the_study_groups() -> None:
    model = Model()
    groups = param_groups(model, bb_params=rates(1e-4, 1e-3), head_params=rates(1e-3, 0.0), group_sparsity=True)
    assert [group["name"] for group in groups] == ["backbone_conv", "backbone_other", "heads"]
    assert len(by_name(groups)["heads"]["params"]) == len(list(model.heads.parameters()))


def test_head_inputs_get_the_backbone_penalty_at_the_heads_rates() -> None:
    model = Model()
    groups = by_name(param_groups(model, bb_params=rates(1e-4, 1e-3, gamma=2.0), head_params=rates(1e-3, 0.0, penalty=None),
                                  group_sparsity=True, scope="backbone+head_inputs"))
    assert list(groups) == ["backbone_conv", "backbone_other", "head_inputs", "heads"]
    inputs = groups["head_inputs"]
    expected = [m.weight for head in model.heads.values() for _, m in head_input_layers(head, CHANNELS)]
    assert [id(p) for p in inputs["params"]] == [id(p) for p in expected] and len(expected) == 6
    assert (inputs["penalty"], inputs["lambda_"], inputs["lambda_scale"], inputs["gamma"]) == ("l1_l2", 1e-3, 1.0, 2.0)
    assert inputs["lr"] == 1e-3 and groups["heads"]["penalty"] is None
    heads = {id(p) for p in groups["heads"]["params"]}
    assert not any(id(p) in heads for p in expected)
    assert id(model.heads["male"].features[0].bias) in heads  # biases are not groups


def test_head_lambda_sets_lambda_and_its_ratio_to_the_backbone() -> None:
    groups = by_name(param_groups(Model(), bb_params=rates(1e-4, 1e-3), head_params=rates(1e-3, 0.0), group_sparsity=True,
                                  scope="backbone+head_inputs", head_lambda=4e-3))
    assert groups["head_inputs"]["lambda_"] == 4e-3 and groups["head_inputs"]["lambda_scale"] == pytest.approx(4.0)
    without = by_name(param_groups(Model(), bb_params=rates(1e-4, 1e-3), head_params=rates(1e-3, 0.0), group_sparsity=False,
                                   scope="backbone+head_inputs"))
    assert without["head_inputs"]["penalty"] is None


def test_head_lambda_needs_a_backbone_lambda_and_scope_a_known_value() -> None:
    with pytest.raises(ConfigError, match="head_lambda"):
        param_groups(Model(), bb_params=rates(1e-4, 0.0), head_params=rates(1e-3, 0.0), group_sparsity=True,
                     scope="backbone+head_inputs", head_lambda=1e-3)
    with pytest.raises(ConfigError, match="sparsity_scope"):
        param_groups(Model(), bb_params=rates(1e-4, 0.0), head_params=rates(1e-3, 0.0), group_sparsity=True, scope="heads")


def test_the_prox_zeroes_head_input_groups() -> None:
    model = Model()
    groups = param_groups(model, bb_params=rates(1e-2, 1.0), head_params=rates(1e-2, 0.0), group_sparsity=True,
                          scope="backbone+head_inputs")
    optimizer = ProxAdam(groups)
    features = torch.randn(2, CHANNELS, 4, 4)
    for _ in range(3):
        optimizer.zero_grad()
        sum(head(features).sum() for head in model.heads.values()).backward()
        optimizer.step()
    first = model.heads["male"].features[0].weight
    assert (first.detach().flatten(2).norm(dim=(0, 2)) == 0).all()
