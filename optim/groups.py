"""Parameter groups of a multi-task model: which tensors get the proximal step, at which rates.

Groups of the sparsity penalty are the input channels of the backbone's conv weights
(REFERENCE §5), so the backbone's 4-D weights form the one proximal group; its other
parameters (BatchNorm, biases) are never penalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from torch import Tensor, nn


class OptimizerParams(Protocol):
    """The fields of ``optimizer_params`` / ``bb_optimizer_params`` used here (``utils.config``).

    ``eps``, ``weighted`` and ``reweight`` are read when present (defaults 1e-8, True, True).
    """

    learning_rate: float
    betas: tuple[float, float]
    weight_decay: float
    momentum: float
    penalty: str | None
    lambda_: float
    gamma: float


def param_groups(
    model: nn.Module,
    *,
    bb_params: OptimizerParams,
    head_params: OptimizerParams,
    group_sparsity: bool,
    extra: Iterable[Tensor] = (),
) -> list[dict[str, Any]]:
    """Groups "backbone_conv", "backbone_other", "heads", "loss_weights" (empty ones left out).

    Args:
        model: has ``backbone`` (module) and ``heads`` (``nn.ModuleDict``); every parameter must
            belong to one of them or to ``extra``.
        bb_params / head_params: rates of the backbone and of the heads.
        group_sparsity: give the backbone's conv weights ``bb_params.penalty`` (else None).
        extra: loss-weighting parameters: the heads' rate, no weight decay.
    """
    extra = list(extra)
    backbone = list(model.backbone.parameters())
    heads = list(model.heads.parameters())
    _check_covered(model, [*backbone, *heads, *extra])
    penalty = bb_params.penalty if group_sparsity else None
    groups = [
        _group("backbone_conv", [p for p in backbone if p.ndim == 4], bb_params, penalty=penalty),
        _group("backbone_other", [p for p in backbone if p.ndim != 4], bb_params),
        _group("heads", heads, head_params),
        _group("loss_weights", extra, head_params, weight_decay=0.0),
    ]
    return [group for group in groups if group["params"]]


def _group(
    name: str, params: list[Tensor], rates: OptimizerParams, *, penalty: str | None = None,
    weight_decay: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "params": params,
        "lr": rates.learning_rate,
        "betas": tuple(rates.betas),
        "eps": getattr(rates, "eps", 1e-8),
        "weight_decay": rates.weight_decay if weight_decay is None else weight_decay,
        "momentum": rates.momentum,
        "penalty": penalty,
        "lambda_": rates.lambda_,
        "gamma": rates.gamma,
        "weighted": getattr(rates, "weighted", True),
        "reweight": getattr(rates, "reweight", True),
    }


def _check_covered(model: nn.Module, grouped: list[Tensor]) -> None:
    """Every model parameter must land in a group: a missing one would silently never train."""
    seen = {id(p) for p in grouped}
    missing = [name for name, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ValueError(f"parameters outside model.backbone and model.heads: {missing[:5]}; pass them as extra")
