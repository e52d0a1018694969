"""The one optimizer of a multi-task model, built from the config's :class:`~utils.config.OptimizerSpec`,
and the knobs the sparsity schedule turns (λ, the proximal switch, the penalty's value)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optim.groups import param_groups
from optim.prox_adam import ProxAdam
from optim.sparsity import penalty
from utils.config import OptimizerSpec


def build(spec: OptimizerSpec, model: nn.Module, *, extra: Iterable[Tensor] = ()) -> Optimizer:
    """One optimizer for the whole model (see :func:`optim.groups.param_groups` for its groups).

    Adam/AdamW on both sides gives one :class:`ProxAdam` whose groups carry their own
    ``decoupled_weight_decay`` (AdamW groups next to Adam groups); SGD on both sides gives
    ``torch.optim.SGD`` with Nesterov momentum (the study's), no proximal step. The config
    schema has already refused the combinations that cannot be built.
    """
    groups = param_groups(
        model, bb_params=spec.backbone, head_params=spec.head, group_sparsity=spec.group_sparsity,
        scope=spec.scope, head_lambda=spec.head_lambda, extra=extra,
    )
    if spec.backbone_kind == "sgd":
        return torch.optim.SGD(groups, lr=spec.backbone.learning_rate, momentum=spec.backbone.momentum, nesterov=True)
    for group in groups:
        kind = spec.backbone_kind if group["name"].startswith("backbone") else spec.head_kind
        group["decoupled_weight_decay"] = kind == "adamw"
    return ProxAdam(groups, lr=spec.backbone.learning_rate)


def set_lambda(optimizer: Optimizer, value: float) -> int:
    """Set the backbone's λ (schedules, the target controller); returns how many groups changed.

    A group with ``lambda_scale`` (the heads' input groups under ``head_lambda``) keeps its
    ratio to the backbone's λ.
    """
    if not value >= 0:
        raise ValueError(f"Invalid lambda_ value: {value}")
    groups = penalised(optimizer)
    for group in groups:
        group["lambda_"] = float(value) * group.get("lambda_scale", 1.0)
    return len(groups)


def set_prox(optimizer: Optimizer, enabled: bool) -> int:
    """Switch the proximal step of every penalised group (off for a dense warm-up); returns their count."""
    groups = penalised(optimizer)
    for group in groups:
        group["prox"] = bool(enabled)
    return len(groups)


def penalty_tensor(optimizer: Optimizer) -> Tensor:
    """Σ over the penalised groups of their penalty at the current weights, as the prox sees it; differentiable.

    λ_g = λ√|g| with ``reweight`` (|g| the group's size). A 0-d zero without penalised groups.
    """
    total = _zero(optimizer)
    for group in penalised(optimizer):
        total = total + penalty(
            group["params"], penalty=group["penalty"], lam=group["lambda_"], gamma=group["gamma"],
            reweight=group["reweight"],
        )
    return total


def study_penalty_tensor(optimizer: Optimizer) -> Tensor:
    """The penalty the study added to its loss: λ Σ_g √(input channels of the layer) ‖w_g‖₂ (REFERENCE §9).

    Its weight is the square root of the layer's number of input channels, not of the group's
    size, and it is the group lasso whatever the prox's penalty; differentiable.
    """
    total = _zero(optimizer)
    for group in penalised(optimizer):
        for weight in group["params"]:
            if weight.shape[1] == 0:
                continue
            norms = torch.linalg.vector_norm(weight, dim=[d for d in range(weight.ndim) if d != 1])
            total = total + group["lambda_"] * math.sqrt(weight.shape[1]) * norms.sum()
    return total


def penalised(optimizer: Optimizer) -> list[dict[str, Any]]:
    """The parameter groups that carry a group penalty."""
    return [group for group in optimizer.param_groups if group.get("penalty") is not None]


def _zero(optimizer: Optimizer) -> Tensor:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.zeros((), device=params[0].device if params else None)
