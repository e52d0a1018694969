"""Adam / AdamW followed by a proximal step of a group penalty, in Adam's own metric.

After the Adam update of step t the parameters are

    x = w − α · m / d,   α = lr / (1 − β₁ᵗ),   d = √(v / (1 − β₂ᵗ)) + ε,

exactly as ``torch.optim.Adam`` computes them, so x minimises ⟨m, z⟩ + ‖z − w‖²_D / (2α) and
the proximal step of the penalty P in that metric is z = argmin ½‖z − x‖²_D + α P(z)
(see :mod:`optim.prox`). (Scaling d and α by one factor leaves z unchanged; the fused path
uses d = √v + ε√(1 − β₂ᵗ) with α·√(1 − β₂ᵗ).) With λ = 0 or ``prox=False`` the optimizer is
``torch.optim.Adam`` (``decoupled_weight_decay=False``) or ``torch.optim.AdamW`` (``True``).
The unweighted variant (``weighted=False``) applies the plain-metric prox, d ≡ 1, which no
common factor leaves unchanged: its step is REFERENCE §5's α·√(1 − β₂ᵗ) = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)
(the step of d = √v + ε) on every path.

Where this differs from the public reference implementation (Deleu & Bengio 2021,
https://github.com/tristandeleu/pytorch-structured-sparsity, ``AdamW`` with ``groups_fn``):
there the Adam step uses lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) with d = √v + ε, but the proximal step uses
the base ``lr`` as α with that same d, so the penalty's strength drifts with the bias
corrections (by up to 1/√(1 − β₂ᵗ) early in training) and the prox is not the proximal map of
the step just taken. Here α and d are the pair of the step itself. Its Newton iterations also
stop on a host-side test per iteration and tensor; here all groups are solved at once.

Implementations (all give torch's results up to rounding): ``fused`` runs torch's fused Adam(W)
kernel, one pass per tensor (the default on the CPU, where it is several times faster than the
``_foreach`` ops, and only there: steps are kept on the CPU). For the weighted group lasso it
runs the C kernel of :mod:`optim.kernel` instead, which applies Adam's update and takes the
prox's moments in one pass and writes z in a second (see :func:`optim.prox.adam_group_l1_l2_`);
it keeps each parameter's group norms in the state as ``prox_norms`` (the next step's
expansion points, saved and restored with the state so that a resumed run repeats the
uninterrupted one; a step the kernel does not take drops them). Otherwise ``foreach`` selects
the multi-tensor ``_foreach`` path (default) or a per-tensor loop.

Parameter-group keys, besides ``lr``, ``betas``, ``eps``, ``weight_decay``, ``foreach``,
``fused``: ``decoupled_weight_decay`` (AdamW when true), ``penalty`` ("l1_l2", "group_mcp" or
None), ``lambda_`` (≥ 0, may change between steps), ``gamma`` (MCP, > 0), ``weighted`` (prox
in Adam's metric, else in the plain one), ``reweight`` (λ·√group size), ``prox`` (False skips
the proximal step, for a dense warm-up). Penalised parameters need ≥ 2 dims: groups are the
slices ``W[:, j, ...]``. Empty parameters (no elements, or no groups: shape ``(o, 0, …)``) go
through every path untouched. The proximal step's tolerances, its exact zero test and its
host synchronisations (one per weighted penalised group and step) are those of :mod:`optim.prox`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optim.prox import adam_group_l1_l2_, prox_group_l1_l2_, prox_group_mcp_

PENALTIES = ("l1_l2", "group_mcp")
_FUSED_DTYPES = (torch.float32, torch.float64)


class ProxAdam(Optimizer):
    """Adam(W) with a proximal group-sparsity step on the parameter groups that ask for it."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        penalty: str | None = None,
        lambda_: float = 0.0,
        gamma: float = 3.0,
        weighted: bool = True,
        reweight: bool = True,
        prox: bool = True,
        foreach: bool = True,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, penalty=penalty, lambda_=lambda_,
            gamma=gamma, weighted=weighted, reweight=reweight, prox=prox, foreach=foreach, fused=fused,
        )
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its hyper-parameters (group keys override the defaults)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate(group)
        for p in group["params"]:
            if group["penalty"] is not None and p.ndim < 2:
                raise ValueError(
                    f"Invalid penalised parameter of shape {tuple(p.shape)}: groups are slices along dim 1"
                )
        if group["fused"] and not _fusable(group["params"]):
            raise ValueError("Invalid fused=True: it needs CPU parameters of one dtype, float32 or float64")

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
    ) -> None:
        """Collect the parameters with a gradient, creating their state on first use."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("ProxAdam does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Adam(W) step, then the proximal step of each penalised group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)
            if not params:
                continue
            use_prox = group["penalty"] is not None and group["prox"] and group["lambda_"] > 0
            fused = group["fused"] if group["fused"] is not None else _fusable(params)
            adam = _multi_tensor_adam if group["foreach"] else _single_tensor_adam
            beta1, beta2 = group["betas"]
            kwargs = dict(
                beta1=beta1, beta2=beta2, lr=group["lr"], eps=group["eps"],
                weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
            )
            weighted = use_prox and group["weighted"]
            if fused and weighted and group["penalty"] == "l1_l2" and _kernel_step(
                group, params, grads, exp_avgs, exp_avg_sqs, steps, [self.state[p] for p in params], **kwargs
            ):
                continue
            for p in params:
                self.state[p].pop("prox_norms", None)  # a step the kernel did not take makes them stale
            offsets = None
            if fused:
                alphas, offsets = _fused_adam(params, grads, exp_avgs, exp_avg_sqs, steps, **kwargs)
                denoms = exp_avg_sqs if weighted else None
            else:
                alphas, denoms = adam(params, grads, exp_avgs, exp_avg_sqs, steps, **kwargs, keep_denoms=weighted)
                if not weighted:  # these α pair with d = √v̂ + ε; with d ≡ 1 nothing rescales, so the prox takes §5's α
                    alphas = _fused_metric(steps, beta1, beta2, group["lr"], group["eps"])[0]
            if use_prox:
                _prox(group, params, alphas, denoms, offsets if weighted else None)
        return loss


def _fusable(params: list[Tensor]) -> bool:
    """Whether torch's fused kernel can run on these parameters with CPU-held steps."""
    return (
        bool(params)
        and all(p.device.type == "cpu" for p in params)
        and len({p.dtype for p in params}) == 1
        and params[0].dtype in _FUSED_DTYPES
    )


def _prox(
    group: dict[str, Any], params: list[Tensor], alphas: list[float], denoms: list[Tensor] | None,
    offsets: list[float] | None,
) -> None:
    """The group's proximal step; with ``offsets`` the ``denoms`` are Adam's v and d = √v + offset."""
    common = dict(alpha=alphas, lam=group["lambda_"], denoms=denoms, reweight=group["reweight"], sqrt_offsets=offsets)
    if group["penalty"] == "l1_l2":
        prox_group_l1_l2_(params, **common)
    else:
        prox_group_mcp_(params, gamma=group["gamma"], **common)


def _validate(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyper-parameter of a group."""
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    if isinstance(lr, Tensor):
        raise ValueError(f"Invalid learning rate: {lr} (a float is expected)")
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    betas = group["betas"]
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (expected two values)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not wd >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {wd}")
    if group["penalty"] not in (None, *PENALTIES):
        raise ValueError(f"Invalid penalty: {group['penalty']!r} (expected one of None, 'l1_l2', 'group_mcp')")
    if not group["lambda_"] >= 0.0:
        raise ValueError(f"Invalid lambda_ value: {group['lambda_']}")
    if not group["gamma"] > 0.0:
        raise ValueError(f"Invalid gamma value: {group['gamma']}")


def _bias_corrections(steps: list[Tensor], beta1: float, beta2: float, lr: float, ahead: int = 0) -> tuple[list[float], list[float]]:
    """Step sizes α = lr/(1 − β₁ᵗ) and √(1 − β₂ᵗ), per parameter (their step counts t, plus ``ahead``, may differ)."""
    counts = [s.item() + ahead for s in steps]
    return [lr / (1 - beta1**t) for t in counts], [(1 - beta2**t) ** 0.5 for t in counts]


def _fused_metric(
    steps: list[Tensor], beta1: float, beta2: float, lr: float, eps: float, ahead: int = 0
) -> tuple[list[float], list[float]]:
    """The step sizes of REFERENCE §5, lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ), and the offsets ε√(1 − β₂ᵗ) of its
    metric d = √v + offset (the fused path's form: v is not bias-corrected)."""
    alphas, bc2_sqrt = _bias_corrections(steps, beta1, beta2, lr, ahead)
    return [a * b for a, b in zip(alphas, bc2_sqrt)], [eps * b for b in bc2_sqrt]


def _kernel_step(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    states: list[dict[str, Any]],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> bool:
    """Adam(W) and the weighted lasso prox in one pass of the C kernel (:mod:`optim.kernel`).

    The metric and step are the fused path's (d = √v + ε√(1 − β₂ᵗ), α·√(1 − β₂ᵗ)). The group
    norms ‖z‖ of the step are kept in the state as ``prox_norms``: the next step expands its
    moments about them in the pass of the Adam update (saved with the state, so that a
    resumed run computes what the uninterrupted one did). Returns False, having changed
    nothing, when the kernel does not take these parameters.
    """
    alphas, offsets = _fused_metric(steps, beta1, beta2, lr, eps, ahead=1)
    norms = adam_group_l1_l2_(
        params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
        norms=[state.get("prox_norms") for state in states], alpha=alphas, sqrt_offsets=offsets,
        lam=group["lambda_"], reweight=group["reweight"],
        decay=1 - lr * weight_decay if decoupled else 1.0, weight_decay=0.0 if decoupled else weight_decay,
        betas=(beta1, beta2),
    )
    if norms is None:
        return False
    torch._foreach_add_(steps, 1.0)
    for state, norm in zip(states, norms):
        state["prox_norms"] = norm
    return True


def _fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> tuple[list[float], list[float]]:
    """torch's fused Adam(W) kernel; the step sizes α·√(1 − β₂ᵗ) of the metric d = √v + ε√(1 − β₂ᵗ), and its offsets ε√(1 − β₂ᵗ)."""
    torch._foreach_add_(steps, 1.0)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False,
    )
    return _fused_metric(steps, beta1, beta2, lr, eps)


def _multi_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    keep_denoms: bool,
) -> tuple[list[float], list[Tensor] | None]:
    """The foreach Adam(W) update of ``torch.optim.Adam``; returns the step sizes α and, if asked, d."""
    torch._foreach_add_(steps, 1.0)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    del grads
    alphas, bc2_sqrt = _bias_corrections(steps, beta1, beta2, lr)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, bc2_sqrt)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-a for a in alphas])
    return alphas, denoms if keep_denoms else None


def _single_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    keep_denoms: bool,
) -> tuple[list[float], list[Tensor] | None]:
    """The per-tensor Adam(W) update of ``torch.optim.Adam``; same results as the foreach path."""
    alphas, denoms = [], []
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step_t += 1
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        (alpha,), (bc2_sqrt,) = _bias_corrections([step_t], beta1, beta2, lr)
        denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-alpha)
        alphas.append(alpha)
        if keep_denoms:
            denoms.append(denom)
    return alphas, denoms if keep_denoms else None
