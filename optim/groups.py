"""Parameter groups of a multi-task model: which tensors get the proximal step, at which rates.

Groups of the sparsity penalty are the input channels of conv weights (REFERENCE §5). With
``scope="backbone"`` (the study's) the backbone's 4-D weights form the one proximal group; its
other parameters (BatchNorm, biases) are never penalised. With ``scope="backbone+head_inputs"``
the layers of each head that read the backbone's features form a second proximal group,
"head_inputs": a zero group there is a backbone channel the head no longer reads, which
``models.compact`` removes from that head even while other heads still read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from utils.errors import ConfigError

Scope = Literal["backbone", "backbone+head_inputs"]
SCOPES: tuple[Scope, ...] = ("backbone", "backbone+head_inputs")

#: Layers whose weights can be input-channel groups of a head input.
_READERS = (nn.Conv2d, nn.Linear)


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
    scope: Scope = "backbone",
    head_lambda: float | None = None,
    extra: Iterable[Tensor] = (),
) -> list[dict[str, Any]]:
    """Groups "backbone_conv", "backbone_other", "head_inputs", "heads", "loss_weights" (empty ones left out).

    Args:
        model: has ``backbone`` (module) and ``heads`` (``nn.ModuleDict``); every parameter must
            belong to one of them or to ``extra``. ``scope="backbone+head_inputs"`` also needs
            ``backbone.out_channels`` (the features' channel count) to find the head inputs.
        bb_params / head_params: rates of the backbone and of the heads.
        group_sparsity: give the penalised groups ``bb_params.penalty`` (else None).
        scope: "backbone", or "backbone+head_inputs" for the extra group "head_inputs": the
            weights of :func:`head_input_layers` of every head, at the heads' rates (lr, betas,
            weight decay) with the backbone's penalty (penalty, gamma, weighted, reweight).
        head_lambda: λ of "head_inputs"; None: the backbone's λ. The group's ``lambda_scale``
            (head λ / backbone λ) tells ``set_lambda`` how to follow a λ schedule:
            λ_head = scheduled λ · ``lambda_scale``.
        extra: loss-weighting parameters: the heads' rate, no weight decay.
    """
    if scope not in SCOPES:
        raise ConfigError(f"config key 'sparsity_scope': expected one of {list(SCOPES)}, got {scope!r}")
    extra = list(extra)
    backbone = list(model.backbone.parameters())
    inputs = head_input_weights(model) if scope == "backbone+head_inputs" else []
    taken = {id(p) for p in inputs}
    heads = [p for p in model.heads.parameters() if id(p) not in taken]
    _check_covered(model, [*backbone, *inputs, *heads, *extra])
    penalty = bb_params.penalty if group_sparsity else None
    groups = [
        _group("backbone_conv", [p for p in backbone if p.ndim == 4], bb_params, penalty=penalty),
        _group("backbone_other", [p for p in backbone if p.ndim != 4], bb_params),
        *([_head_inputs_group(inputs, bb_params, head_params, penalty, head_lambda)] if inputs else []),
        _group("heads", heads, head_params),
        _group("loss_weights", extra, head_params, weight_decay=0.0),
    ]
    return [group for group in groups if group["params"]]


def head_input_layers(head: nn.Module, in_channels: int) -> list[tuple[str, nn.Module]]:
    """The head's layers that read its input: the first Conv2d/Linear on each path from it.

    Found by one forward pass (eval mode, no grad) on a zero ``2 x in_channels x 8 x 8`` input,
    following the input through parameter-free leaf modules (pooling, dropout, activations):
    for the ASPP head, the 1x1 branch, the three atrous branches and the pooling branch's conv;
    for the attribute head, its first conv. Paths through functional code in ``forward``
    (rather than modules) are not followed. Returned as (name in ``head``, module), in call order.
    """
    names = {module: name for name, module in head.named_modules()}
    derived: set[int] = set()
    alive: list[Tensor] = []  # keeps traced tensors alive, so their ids are never reused
    found: dict[str, nn.Module] = {}

    def follow(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not args or not isinstance(args[0], Tensor) or id(args[0]) not in derived:
            return
        if isinstance(module, _READERS):
            found.setdefault(names[module], module)
        elif isinstance(output, Tensor) and next(module.parameters(recurse=False), None) is None:
            alive.append(output)
            derived.add(id(output))

    leaves = [m for m in head.modules() if next(m.children(), None) is None]
    modes = {m: m.training for m in head.modules()}
    handles = [m.register_forward_hook(follow) for m in leaves]
    try:
        reference = next(head.parameters())
        features = torch.zeros(2, in_channels, 8, 8, device=reference.device, dtype=reference.dtype)
        derived.add(id(features))
        head.eval()
        with torch.no_grad():
            head(features)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return list(found.items())


def head_input_weights(model: nn.Module) -> list[Tensor]:
    """The weights of every head's input layers (:func:`head_input_layers`), heads in order."""
    channels = model.backbone.out_channels
    return [layer.weight for head in model.heads.values() for _, layer in head_input_layers(head, channels)]


def _head_inputs_group(
    params: list[Tensor], bb_params: OptimizerParams, head_params: OptimizerParams, penalty: str | None,
    head_lambda: float | None,
) -> dict[str, Any]:
    """The heads' rates with the backbone's penalty; λ and its ratio to the backbone's λ."""
    base = bb_params.lambda_
    if head_lambda is None:
        lam, scale = base, 1.0
    elif base:
        lam, scale = head_lambda, head_lambda / base
    elif head_lambda == 0:
        lam, scale = 0.0, 0.0
    else:
        raise ConfigError(
            f"config key 'head_lambda': {head_lambda} is kept as a ratio to bb_optimizer_params.lambda along λ "
            f"schedules, which is {base}; expected bb_optimizer_params.lambda > 0 (or head_lambda: null)"
        )
    group = _group("head_inputs", params, head_params, penalty=penalty)
    group.update(lambda_=lam, lambda_scale=scale, gamma=bb_params.gamma,
                 weighted=getattr(bb_params, "weighted", True), reweight=getattr(bb_params, "reweight", True))
    return group


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
