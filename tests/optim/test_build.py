"""optim.build: parameter groups, optimizer kinds, unbuildable configs, and the trainer's knobs."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import optim
from optim import ProxAdam, param_groups, penalty_tensor, set_lambda, set_prox
from optim.sparsity import penalty
from utils.config import OptimizerSpec, validate
from utils.errors import ConfigError


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.heads = nn.ModuleDict({"a": nn.Conv2d(4, 2, 1), "b": nn.Linear(4, 1)})


def rates(lr: float, wd: float, **extra: object) -> SimpleNamespace:
    fields = dict(learning_rate=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, penalty="l1_l2", lambda_=1e-3,
                  gamma=3.0, momentum=0.8)
    return SimpleNamespace(**{**fields, **extra})


def config(head: str = "adam", backbone: str = "adamw", sparsity: bool = True, **bb: object) -> OptimizerSpec:
    return OptimizerSpec(head_kind=head, head=rates(1e-3, 0.01, penalty=None), backbone_kind=backbone,
                         backbone=rates(1e-4, 0.1, **bb), group_sparsity=sparsity)


def by_name(opt: torch.optim.Optimizer) -> dict:
    return {group["name"]: group for group in opt.param_groups}


def test_adam_heads_and_adamw_backbone_make_one_prox_adam() -> None:
    model, weights = Model(), nn.Parameter(torch.zeros(2))
    opt = optim.build(config(), model, extra=[weights])
    assert isinstance(opt, ProxAdam)
    groups = by_name(opt)
    assert list(groups) == ["backbone_conv", "backbone_other", "heads", "loss_weights"]
    conv = groups["backbone_conv"]
    assert conv["params"] == [model.backbone[0].weight, model.backbone[2].weight]
    assert (conv["penalty"], conv["lambda_"], conv["lr"], conv["weight_decay"]) == ("l1_l2", 1e-3, 1e-4, 0.1)
    assert conv["decoupled_weight_decay"] and groups["backbone_other"]["decoupled_weight_decay"]
    assert groups["backbone_other"]["penalty"] is None and groups["backbone_other"]["lr"] == 1e-4
    assert len(groups["backbone_other"]["params"]) == 3  # BN weight, BN bias, conv bias
    assert not groups["heads"]["decoupled_weight_decay"] and groups["heads"]["lr"] == 1e-3
    assert groups["loss_weights"]["params"] == [weights] and groups["loss_weights"]["weight_decay"] == 0.0
    assert groups["loss_weights"]["lr"] == 1e-3


def test_no_group_sparsity_means_no_penalty() -> None:
    opt = optim.build(config(sparsity=False), Model())
    assert all(group["penalty"] is None for group in opt.param_groups)
    assert set_lambda(opt, 1e-2) == 0


def test_sgd_on_both_sides_without_sparsity() -> None:
    opt = optim.build(config("sgd", "sgd", sparsity=False), Model())
    assert type(opt) is torch.optim.SGD
    groups = by_name(opt)
    assert groups["backbone_conv"]["momentum"] == 0.8 and groups["heads"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"optimizer": "sgd", "bb_optimizer": "sgd", "group_sparsity_optimizer": "bb_optimizer"}, "bb_optimizer: 'sgd'"),
        ({"optimizer": "sgd", "bb_optimizer": "adam", "group_sparsity": False}, "cannot be mixed"),
        ({"optimizer": "adam", "bb_optimizer": "sgd", "group_sparsity": False}, "cannot be mixed"),
        ({"bb_optimizer_params": {"penalty": None}}, "bb_optimizer_params.penalty"),
    ],
)
def test_unbuildable_optimizers_are_config_errors(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"Experiment_name": "t", "task_list": ["segmentsemantic"], "group_sparsity": True, **keys})


def test_parameters_outside_backbone_and_heads_are_refused() -> None:
    model = Model()
    model.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match=r"\['scale'\]"):
        param_groups(model, bb_params=rates(1, 0), head_params=rates(1, 0), group_sparsity=True)


def test_lambda_prox_switch_and_penalty_tensor() -> None:
    model = Model()
    opt = optim.build(config(), model)
    assert set_lambda(opt, 0.5) == 1 and by_name(opt)["backbone_conv"]["lambda_"] == 0.5
    with pytest.raises(ValueError, match="Invalid lambda_ value: -1"):
        set_lambda(opt, -1)
    assert set_prox(opt, False) == 1 and by_name(opt)["backbone_conv"]["prox"] is False
    value = penalty_tensor(opt)
    assert value.item() == pytest.approx(penalty(model.backbone, lam=0.5).item())
    value.backward()
    assert model.backbone[0].weight.grad is not None and model.heads["a"].weight.grad is None


def test_build_works_with_the_project_config() -> None:
    config_module = pytest.importorskip("utils.config")
    cfg = config_module.ExperimentConfig(Experiment_name="t", task_list=["segmentsemantic"], group_sparsity=True,
                                         optimizer="adam", bb_optimizer="adamw")
    opt = optim.build(cfg.optimizer_spec, Model())
    assert by_name(opt)["backbone_conv"]["penalty"] == cfg.bb_optimizer_params.penalty


class HeadModel(nn.Module):
    """A backbone and real heads (their first layers read the backbone's channels)."""

    def __init__(self) -> None:
        super().__init__()
        from models.heads import ClassificationHead

        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False))
        self.backbone.out_channels = 8
        self.heads = nn.ModuleDict({"a": ClassificationHead(8, 1)})


def test_head_inputs_join_the_prox_and_keep_their_ratio_to_the_backbones_lambda() -> None:
    spec = dataclasses.replace(config(), scope="backbone+head_inputs", head_lambda=2e-3)
    model = HeadModel()
    opt = optim.build(spec, model)
    groups = by_name(opt)
    assert groups["head_inputs"]["params"] == [model.heads["a"].features[0].weight]
    assert groups["head_inputs"]["lambda_scale"] == pytest.approx(2.0) and groups["head_inputs"]["penalty"] == "l1_l2"
    assert set_lambda(opt, 0.5) == 2
    assert groups["head_inputs"]["lambda_"] == pytest.approx(1.0) and groups["backbone_conv"]["lambda_"] == 0.5


@pytest.mark.parametrize(("keys", "message"), [
    ({"head_lambda": 1e-3}, "only sparsity_scope"),
    ({"head_lambda": 1e-3, "sparsity_scope": "backbone+head_inputs", "bb_optimizer_params": {"lambda": 0.0}}, "ratio"),
])
def test_head_lambda_needs_its_scope_and_a_backbone_lambda(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"Experiment_name": "t", "task_list": ["segmentsemantic"], "group_sparsity": True, **keys})
