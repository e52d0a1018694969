"""The sparsity schedule: λ per epoch, the target-sparsity controller, the frozen pattern and fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import optim
from engine.sparsity_schedule import LambdaController, SparsitySchedule, _target_pattern
from optim import sparsity
from tests.tiny import tiny_raw
from utils import config


class Small(nn.Module):
    """A backbone of three convs (9 + 6 + 4 input-channel groups) and one head: what ``optim.build`` expects."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(9, 6, 3), nn.Conv2d(6, 4, 1), nn.Conv2d(4, 5, 3))
        self.heads = nn.ModuleDict({"depth_euclidean": nn.Conv2d(5, 1, 1)})


def make(tmp_path: Path, **changes: Any) -> tuple[config.ExperimentConfig, Small, torch.optim.Optimizer, SparsitySchedule]:
    raw = tiny_raw("sched", tmp_path / "runs", tmp_path / "data", **{"epochs": 6, "sparsity_threshold": 0, **changes})
    cfg = config.validate(raw, source="test")
    torch.manual_seed(0)
    model = Small()
    optimizer = optim.build(cfg.optimizer_spec, model)
    return cfg, model, optimizer, SparsitySchedule(cfg, optimizer, model.backbone)


def train_steps(model: Small, optimizer: torch.optim.Optimizer, schedule: SparsitySchedule, steps: int) -> None:
    """Random-gradient steps: every weight would move without the schedule holding some at zero."""
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        schedule.after_step()


def zero_groups(model: Small) -> list[list[int]]:
    return [[j for j in range(w.shape[1]) if not w[:, j].any()] for w in sparsity.conv_weights(model.backbone).values()]


# --------------------------------------------------------------------------- λ over epochs
def test_lambda_list_blocks_then_the_last_entry(tmp_path: Path) -> None:
    *_, schedule = make(tmp_path, lambda_list=[1e-4, 1e-3, 1e-2], lambda_every=2)
    assert [schedule.lambda_at(e) for e in range(8)] == [1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2, 1e-2]


def test_lambda_reaches_the_optimizer_and_prox_waits_for_the_threshold(tmp_path: Path) -> None:
    _, _, optimizer, schedule = make(tmp_path, sparsity_threshold=2)
    for epoch, prox in ((0, False), (1, False), (2, True)):
        assert schedule.on_epoch_start(epoch) == 1e-2
        conv = next(g for g in optimizer.param_groups if g["name"] == "backbone_conv")
        assert (conv["lambda_"], conv["prox"]) == (1e-2, prox)


def test_without_group_sparsity_lambda_is_zero(tmp_path: Path) -> None:
    *_, schedule = make(tmp_path, group_sparsity=False, lambda_list=[1e-3])
    assert schedule.lambda_at(0) == 0.0 and schedule.controller is None


# --------------------------------------------------------------------------- the controller
def plant(log_lambda: float) -> float:
    """A monotone sparsity response to λ: half the groups at λ = 1e-3, saturating either side."""
    return 1 / (1 + math.exp(-1.5 * (log_lambda - math.log(1e-3))))


@pytest.mark.parametrize("target", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("start", [1e-7, 1e-3, 1.0])
def test_controller_settles_in_the_band_with_bounded_steps(target: float, start: float) -> None:
    controller = LambdaController(target=target, log_lambda=math.log(start))
    previous = controller.log_lambda
    for _ in range(200):
        controller.update(plant(controller.log_lambda))
        assert abs(controller.log_lambda - previous) <= controller.max_step + 1e-12  # the rate limit
        previous = controller.log_lambda
    assert abs(plant(controller.log_lambda) - target) <= controller.band
    assert controller.reached


def test_controller_moves_lambda_the_right_way_and_not_inside_the_dead_band() -> None:
    controller = LambdaController(target=0.5, log_lambda=0.0)
    assert controller.update(0.1) > 1.0  # too few zero groups: λ up
    controller = LambdaController(target=0.5, log_lambda=0.0)
    assert controller.update(0.9) < 1.0  # too many: λ down
    controller = LambdaController(target=0.5, log_lambda=0.0)
    assert controller.update(0.5 + controller.band / 8) == 1.0


def test_frozen_controller_keeps_lambda_and_its_state_round_trips() -> None:
    controller = LambdaController(target=0.3, log_lambda=math.log(1e-4))
    for measured in (0.0, 0.05, 0.2):
        controller.update(measured)
    copy = LambdaController(target=0.0, log_lambda=0.0)
    copy.load_state_dict(controller.state_dict())
    assert [copy.update(s) for s in (0.25, 0.31)] == [controller.update(s) for s in (0.25, 0.31)]
    controller.frozen = True
    lam = controller.lam
    assert controller.update(0.0) == lam


# --------------------------------------------------------------------------- the frozen pattern
def brute_force_pattern(weights: list[torch.Tensor], target: float) -> set[tuple[int, int]]:
    """(weight, group) pairs of the round(target · n) smallest ‖w_g‖/√|g|, ties by position."""
    scored = []
    for i, w in enumerate(weights):
        for j in range(w.shape[1]):
            scored.append((float(torch.linalg.vector_norm(w[:, j].detach().double())) / math.sqrt(w[:, j].numel()), i, j))
    scored.sort()
    return {(i, j) for _, i, j in scored[: round(target * len(scored))]}


@pytest.mark.parametrize("target", [0.0, 0.2, 0.5, 0.74, 1.0])
def test_target_pattern_is_the_weakest_groups_over_all_layers(tmp_path: Path, target: float) -> None:
    _, model, optimizer, _ = make(tmp_path)
    weights = list(sparsity.conv_weights(model.backbone).values())
    with torch.no_grad():
        weights[0][:, [1, 4]] = 0  # zero groups come first
        weights[2].mul_(1e3)  # a layer at another scale: the per-size scores are compared across layers
    held = _target_pattern(optimizer, target)
    chosen = {(i, int(j)) for i, indices in enumerate(held) for j in indices}
    assert chosen == brute_force_pattern(weights, target)
    if target >= 0.2:
        assert {(0, 1), (0, 4)} <= chosen


def test_target_epoch_freezes_the_pattern_at_exactly_the_target(tmp_path: Path) -> None:
    _, model, optimizer, schedule = make(tmp_path, target_group_sparsity=0.4, target_epoch=3)
    groups = sum(w.shape[1] for w in sparsity.conv_weights(model.backbone).values())
    schedule.on_epoch_start(0)
    train_steps(model, optimizer, schedule, 4)
    assert schedule.seeking_target
    assert not schedule.on_epoch_end(0)  # not yet: the pattern freezes when epoch 3 (1-based) starts
    schedule.on_epoch_start(1)
    train_steps(model, optimizer, schedule, 4)
    assert schedule.on_epoch_end(1) and not schedule.seeking_target
    frozen = zero_groups(model)
    assert sum(map(len, frozen)) == round(0.4 * groups)
    lam = schedule.on_epoch_start(2)
    assert not any(g["prox"] for g in optim.penalised(optimizer))
    before = [w.detach().clone() for w in sparsity.conv_weights(model.backbone).values()]
    train_steps(model, optimizer, schedule, 5)
    assert zero_groups(model) == frozen  # held: exactly the same groups, exactly zero
    after = list(sparsity.conv_weights(model.backbone).values())
    for w0, w1, zero in zip(before, after, frozen):
        alive = [j for j in range(w0.shape[1]) if j not in zero]
        assert not torch.equal(w0[:, alive], w1[:, alive])  # the surviving groups train on
    assert schedule.on_epoch_start(3) == lam  # λ frozen


def test_zero_groups_beyond_the_target_revive_in_the_target_epoch(tmp_path: Path) -> None:
    """An overshooting controller leaves extra zero groups at the freeze: one step later only the held ones are zero."""
    _, model, optimizer, schedule = make(tmp_path, target_group_sparsity=0.2, target_epoch=2)
    groups = sum(w.shape[1] for w in sparsity.conv_weights(model.backbone).values())
    with torch.no_grad():
        for w in sparsity.conv_weights(model.backbone).values():
            w[:, : w.shape[1] // 2] = 0  # 50 % zero, well over the target
    schedule.on_epoch_start(0)
    assert schedule.on_epoch_end(0)  # target_epoch 2: frozen before it starts
    schedule.on_epoch_start(1)
    train_steps(model, optimizer, schedule, 1)
    assert sum(map(len, zero_groups(model))) == round(0.2 * groups)


def test_finetuning_holds_the_zero_groups_of_the_last_main_epoch(tmp_path: Path) -> None:
    _, model, optimizer, schedule = make(tmp_path, epochs=2, finetune_epochs=2)
    with torch.no_grad():
        for w in sparsity.conv_weights(model.backbone).values():
            w[:, 0] = 0
    schedule.on_epoch_start(2)  # the first fine-tuning epoch
    assert schedule.finetuning and schedule.pattern_frozen
    assert not any(g["prox"] for g in optim.penalised(optimizer))
    train_steps(model, optimizer, schedule, 5)
    assert zero_groups(model) == [[0], [0], [0]]


def test_schedule_state_round_trips_the_held_pattern(tmp_path: Path) -> None:
    _, model, optimizer, schedule = make(tmp_path, target_group_sparsity=0.5, target_epoch=1)
    schedule.on_epoch_start(0)
    train_steps(model, optimizer, schedule, 3)
    schedule.on_epoch_end(0)
    state = schedule.state_dict()
    *_, fresh = make(tmp_path, target_group_sparsity=0.5, target_epoch=1)
    fresh.load_state_dict(state)
    assert fresh.controller.frozen and fresh.steps == 3 and fresh.lam == schedule.lam
    assert [h.tolist() for h in fresh.held] == [h.tolist() for h in schedule.held]
