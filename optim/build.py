"""The one optimizer of a multi-task model, built from the config, and the knobs the trainer turns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optim.groups import param_groups
from optim.prox_adam import ProxAdam
from optim.sparsity import penalty
from utils.errors import ConfigError

#: Optimizer names accepted for ``optimizer`` (heads) and ``bb_optimizer`` (backbone).
KINDS = ("adam", "adamw", "sgd")


def build(cfg: Any, model: nn.Module, *, extra: Iterable[Tensor] = ()) -> Optimizer:
    """One optimizer for the whole model (see :func:`optim.groups.param_groups` for its groups).

    Adam/AdamW on both sides gives one :class:`ProxAdam` whose groups carry their own
    ``decoupled_weight_decay`` (AdamW groups next to Adam groups); SGD on both sides gives
    ``torch.optim.SGD`` (no proximal step). ``cfg`` needs ``optimizer``, ``optimizer_params``,
    ``bb_optimizer``, ``bb_optimizer_params`` and ``group_sparsity``.
    """
    head_kind = _kind(cfg.optimizer, "optimizer")
    bb_kind = _kind(cfg.bb_optimizer, "bb_optimizer")
    bb_params = cfg.bb_optimizer_params
    if cfg.group_sparsity and bb_kind == "sgd":
        raise ConfigError("bb_optimizer: 'sgd' has no proximal step for group_sparsity; expected 'adam' or 'adamw'")
    if (head_kind == "sgd") != (bb_kind == "sgd"):
        raise ConfigError(
            f"optimizer / bb_optimizer: {head_kind!r} cannot be mixed with {bb_kind!r}; "
            "expected both in ('adam', 'adamw') or both 'sgd'"
        )
    if cfg.group_sparsity and bb_params.penalty is None:
        raise ConfigError("bb_optimizer_params.penalty: group_sparsity needs 'l1_l2' or 'group_mcp', got None")
    groups = param_groups(
        model, bb_params=bb_params, head_params=cfg.optimizer_params, group_sparsity=cfg.group_sparsity, extra=extra
    )
    if bb_kind == "sgd":
        return torch.optim.SGD(groups, lr=bb_params.learning_rate)
    for group in groups:
        kind = bb_kind if group["name"].startswith("backbone") else head_kind
        group["decoupled_weight_decay"] = kind == "adamw"
    return ProxAdam(groups, lr=bb_params.learning_rate)


def set_lambda(optimizer: Optimizer, value: float) -> int:
    """Set λ of every penalised group (λ schedules); returns how many groups changed."""
    if not value >= 0:
        raise ValueError(f"Invalid lambda_ value: {value}")
    groups = _penalised(optimizer)
    for group in groups:
        group["lambda_"] = float(value)
    return len(groups)


def set_prox(optimizer: Optimizer, enabled: bool) -> int:
    """Switch the proximal step of every penalised group (off for a dense warm-up); returns their count."""
    groups = _penalised(optimizer)
    for group in groups:
        group["prox"] = bool(enabled)
    return len(groups)


def penalty_tensor(optimizer: Optimizer) -> Tensor:
    """Σ over the penalised groups of their penalty at the current weights, differentiable.

    For logging, or for adding to the loss when the prox is off; a 0-d zero without such groups.
    """
    total: Tensor | None = None
    for group in _penalised(optimizer):
        value = penalty(
            group["params"], penalty=group["penalty"], lam=group["lambda_"], gamma=group["gamma"],
            reweight=group["reweight"],
        )
        total = value if total is None else total + value
    if total is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return torch.zeros((), device=params[0].device if params else None)
    return total


def _penalised(optimizer: Optimizer) -> list[dict[str, Any]]:
    return [group for group in optimizer.param_groups if group.get("penalty") is not None]


def _kind(value: Any, key: str) -> str:
    kind = str(value).lower()
    if kind not in KINDS:
        raise ConfigError(f"{key}: {value!r} is not supported; expected one of {', '.join(KINDS)}")
    return kind
