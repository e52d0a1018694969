"""Proximal operators of group penalties, plain and in Adam's diagonal metric.

Groups are the slices ``W[:, j, ...]`` of each tensor: input channels of a conv weight, input
columns of a linear weight. For one group x (the parameters after the gradient step), a step
α, a metric D = diag(d), d > 0, and λ_g = λ·√|g| (``reweight``; λ_g = λ otherwise) the
operators replace x by

    z = argmin_z ½ Σ_i d_i (z_i − x_i)² + α P(z),

with P(z) = λ_g‖z‖₂ (group lasso, "l1/l2") or the group MCP, P(z) = λ_g t − t²/(2γ) for
t = ‖z‖₂ ≤ γλ_g and γλ_g²/2 beyond (Deleu & Bengio 2021, arXiv 2102.03869).

Weighted case, τ = αλ_g. With e_i = d_i (lasso) or e_i = d_i − α/γ (MCP) the stationary
points are z_i = θ d_i x_i / (θ e_i + τ), where θ = ‖z‖₂ > 0 solves

    F(θ) = Σ_i (d_i x_i)² / (θ e_i + τ)² = 1.

Lasso: z = 0 when ‖Dx‖₂ ≤ τ; otherwise F(θ) = Σ x_i² / (θ + τ/d_i)² is convex and decreasing
with its root in (0, ‖x‖₂]. MCP: z = x when ‖x‖₂ > γλ_g (the Euclidean norm: the penalty is
flat on {‖z‖₂ > γλ_g}, which holds x), z = 0 when ‖Dx‖₂ ≤ τ, otherwise a root in (0, γλ_g]
(F(0) > 1 ≥ F(γλ_g) and every θ e_i + τ > 0 there). The MCP problem is convex, and this is
its exact proximal map, when γ·d_i > α for every i; otherwise it is not convex and the
operator returns the stationary point these rules select.

How the weighted roots are found (vectorised over all groups of all tensors, which sit in one
flat vector; no Python loop over groups):

1. One pass over each tensor computes per group ‖x‖² and, for MCP, ‖Dx‖² (the branches) or,
   for the lasso, five moments n_k = Σ x_i² r_i^(2+k) of r_i = 1/(ρ + τ/d_i) about
   ρ = ‖x‖₂ ≥ θ and max r_i. A 2-node Gauss rule in r gives a model of F with a rigorous error
   bound (see :func:`_moment_root`); its root, certified |F − 1| ≤ tol, and a bound on F(0)
   (the zero test) settle most groups with no iteration over the tensors.
2. One host synchronisation lists the groups left (MCP's root branch, lasso groups whose τ/d_i
   spread widely or whose zero test is close). Their slices are copied out and solved by Newton's method on
   h(θ) = F(θ)^(-1/2) — linear when d is constant, concave for the lasso, so the iterates
   approach the root from the left — safeguarded by a bracket [lo, hi] with F(lo) > 1 ≥ F(hi)
   and bisection. A group is frozen once |F(θ) − 1| ≤ tol or θ stops moving; convergence is
   checked on the host every ``_CHECK_EVERY`` evaluations, at most ``_MAX_EVALS`` in all.
3. A last pass writes z_i = x_i − x_i / (1 + ω d_i), ω = θ/(τ − μθ): exactly 0 when θ = 0 and
   exactly x for MCP's keep branch (ω = ∞).

tol is 1e-6 (1e-10 in float64); sums accumulate in the tensor's dtype, float32 at least.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

_MAX_EVALS = 30
_CHECK_EVERY = 2


def prox_group_l1_l2_(
    tensors: Sequence[Tensor],
    *,
    alpha: float | Sequence[float],
    lam: float,
    denoms: Sequence[Tensor] | None = None,
    reweight: bool = True,
) -> None:
    """Apply the group-lasso proximal map in place (metric ``denoms``, or plain when None).

    Args:
        tensors: tensors with at least 2 dims; groups are the slices along dim 1.
        alpha: step α, one float or one per tensor.
        lam: penalty strength λ ≥ 0.
        denoms: per-element metric d > 0 shaped like ``tensors`` (Adam's denominators), read only.
        reweight: scale λ by √(group size).
    """
    for batch in _batches(tensors, denoms, alpha, lam, reweight):
        if batch.ds is None:
            _plain_l1_l2_(batch)
        else:
            _weighted_(batch, gamma=None)
        batch.write_back()


def prox_group_mcp_(
    tensors: Sequence[Tensor],
    *,
    alpha: float | Sequence[float],
    lam: float,
    gamma: float,
    denoms: Sequence[Tensor] | None = None,
    reweight: bool = True,
) -> None:
    """Apply the group-MCP proximal map in place (metric ``denoms``, or plain when None).

    Args are those of :func:`prox_group_l1_l2_`, plus ``gamma`` > 0, the MCP concavity.
    """
    if not gamma > 0:
        raise ValueError(f"Invalid gamma value: {gamma}")
    for batch in _batches(tensors, denoms, alpha, lam, reweight):
        if batch.ds is None:
            _plain_mcp_(batch, gamma)
        else:
            _weighted_(batch, gamma=gamma)
        batch.write_back()


def group_sum(t: Tensor) -> Tensor:
    """Sum over every dim but 1: one value per group ``t[:, j, ...]``."""
    s = t.sum(0)
    return s.view(-1) if s.numel() == t.shape[1] else s.flatten(1).sum(1)


def _group_max(t: Tensor) -> Tensor:
    """Max over every dim but 1."""
    m = t.amax(0)
    return m.view(-1) if m.numel() == t.shape[1] else m.flatten(1).amax(1)


def group_size(t: Tensor) -> int:
    """Number of elements of one group ``t[:, j, ...]``."""
    return t.numel() // t.shape[1]


# --------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    """Tensors of one device and dtype (in a compute dtype of float32 at least) and their steps."""

    targets: list[Tensor]
    xs: list[Tensor]
    ds: list[Tensor] | None
    taus: list[float]  # α λ_g
    alphas: list[float]
    lams: list[float]  # λ_g

    def write_back(self) -> None:
        for target, x in zip(self.targets, self.xs):
            if x is not target:
                target.copy_(x)


def _batches(
    tensors: Sequence[Tensor],
    denoms: Sequence[Tensor] | None,
    alpha: float | Sequence[float],
    lam: float,
    reweight: bool,
) -> list[_Batch]:
    """Validate, drop tensors with τ = 0 (the map is the identity), group by device and dtype."""
    tensors = list(tensors)
    alphas = [float(alpha)] * len(tensors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(tensors):
        raise ValueError(f"alpha has {len(alphas)} values for {len(tensors)} tensors")
    if denoms is not None and len(denoms) != len(tensors):
        raise ValueError(f"denoms has {len(denoms)} tensors for {len(tensors)} tensors")
    if not lam >= 0:
        raise ValueError(f"Invalid lam value: {lam}")
    by_key: dict[tuple[torch.device, torch.dtype], _Batch] = {}
    for i, t in enumerate(tensors):
        if t.ndim < 2:
            raise ValueError(f"groups are slices along dim 1; got a tensor of shape {tuple(t.shape)}")
        if denoms is not None and denoms[i].shape != t.shape:
            raise ValueError(f"denoms[{i}] has shape {tuple(denoms[i].shape)}, expected {tuple(t.shape)}")
        if not alphas[i] >= 0:
            raise ValueError(f"Invalid alpha value: {alphas[i]}")
        lam_g = lam * math.sqrt(group_size(t)) if reweight else lam
        tau = alphas[i] * lam_g
        if tau == 0 or t.numel() == 0:
            continue
        work = t if t.dtype in (torch.float32, torch.float64) else t.float()
        batch = by_key.setdefault((t.device, t.dtype), _Batch([], [], None if denoms is None else [], [], [], []))
        batch.targets.append(t)
        batch.xs.append(work)
        if batch.ds is not None:
            batch.ds.append(denoms[i].to(work.dtype))
        batch.taus.append(tau)
        batch.alphas.append(alphas[i])
        batch.lams.append(lam_g)
    return list(by_key.values())


def _per_group(like: Sequence[Tensor], values: Sequence[float]) -> Tensor:
    """One flat vector: ``values[i]`` repeated for every group of tensor i."""
    x0 = like[0]
    return torch.cat([torch.full((x.shape[1],), v, dtype=x0.dtype, device=x0.device) for x, v in zip(like, values)])


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """View a per-group vector so that it broadcasts against ``like`` (groups along dim 1)."""
    return v.view((1, -1) + (1,) * (like.ndim - 2))


def _views(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat per-group vector into views that broadcast against each tensor."""
    return [_bcast(part, t) for part, t in zip(flat.split([t.shape[1] for t in like]), like)]


class _Scratch:
    """Reusable flat buffers, viewed in the shape of each tensor (no per-tensor allocations)."""

    def __init__(self, like: Sequence[Tensor], count: int) -> None:
        n = max(t.numel() for t in like)
        self.buffers = [torch.empty(n, dtype=like[0].dtype, device=like[0].device) for _ in range(count)]

    def views(self, t: Tensor) -> list[Tensor]:
        return [b[: t.numel()].view(t.shape) for b in self.buffers]


def _sq_norms(xs: Sequence[Tensor], scratch: _Scratch) -> Tensor:
    """‖x_g‖² of every group of every tensor, as one flat vector."""
    return torch.cat([group_sum(torch.mul(x, x, out=scratch.views(x)[0])) for x in xs])


# --------------------------------------------------------------------------- plain metric
def _plain_l1_l2_(batch: _Batch) -> None:
    norm = _sq_norms(batch.xs, _Scratch(batch.xs, 1)).sqrt_()
    tau = _per_group(batch.xs, batch.taus)
    factor = torch.where(norm > tau, 1 - tau / norm, 0.0)
    for x, f in zip(batch.xs, _views(factor, batch.xs)):
        x.mul_(f)


def _plain_mcp_(batch: _Batch, gamma: float) -> None:
    """Firm thresholding: keep above γλ_g, zero below τ, (‖x‖ − τ)/(1 − α/γ) between."""
    norm = _sq_norms(batch.xs, _Scratch(batch.xs, 1)).sqrt_()
    tau = _per_group(batch.xs, batch.taus)
    radius = _per_group(batch.xs, [gamma * lam for lam in batch.lams])
    slope = _per_group(batch.xs, [1 - a / gamma for a in batch.alphas]).clamp_(min=torch.finfo(norm.dtype).tiny)
    shrunk = ((1 - tau / norm) / slope).clamp_(max=1.0)
    factor = torch.where(norm > radius, 1.0, torch.where(norm > tau, shrunk, 0.0))
    for x, f in zip(batch.xs, _views(factor, batch.xs)):
        x.mul_(f)


# --------------------------------------------------------------------------- weighted metric
@dataclass
class _Roots:
    """Per-group root-finding state on one flat vector (see the module docstring)."""

    theta: Tensor
    lo: Tensor
    hi: Tensor
    done: Tensor
    tau: Tensor
    mu: Tensor | None  # α/γ for MCP, None for the lasso
    tol: float
    keep: Tensor | None = None  # MCP groups left as they are

    def subset(self, idx: Tensor) -> _Roots:
        mu = None if self.mu is None else self.mu[idx]
        return _Roots(self.theta[idx], self.lo[idx], self.hi[idx], self.done[idx], self.tau[idx], mu, self.tol)

    def kappa(self) -> Tensor:
        """τ − μθ: with it θ e_i + τ = θ d_i + κ."""
        return self.tau if self.mu is None else self.tau - self.mu * self.theta

    def write_weights(self) -> Tensor:
        """ω with z_i = x_i − x_i / (1 + ω d_i): θ/(τ − μθ), 0 for θ = 0 (z = 0), ∞ to keep x."""
        omega = self.theta / self.kappa()
        return omega if self.keep is None else torch.where(self.keep, torch.inf, omega)

    def update(self, F: Tensor, psi: Tensor) -> None:
        """Freeze the groups whose F(θ) is within tol of 1; one safeguarded Newton step on the others."""
        eps = torch.finfo(F.dtype).eps
        f = F - 1
        step = F * (F.sqrt() - 1) / psi
        active = ~self.done
        stalled = (step.abs() <= 4 * eps * self.theta) | (self.hi - self.lo <= 4 * eps * self.hi)
        conv = active & ((f.abs() <= self.tol) | stalled)
        right = f > 0
        self.lo = torch.where(active & right, torch.maximum(self.lo, self.theta), self.lo)
        self.hi = torch.where(active & ~right, torch.minimum(self.hi, self.theta), self.hi)
        cand = self.theta + step
        ok = (psi > 0) & (cand >= self.lo) & (cand <= self.hi)
        new = torch.where(ok, cand, 0.5 * (self.lo + self.hi))
        self.theta = torch.where(active & ~conv, new, self.theta)
        self.done = self.done | conv


def _tol(dtype: torch.dtype) -> float:
    """Accepted |F(θ) − 1|: near the rounding of float32 sums, tighter in float64."""
    return 1e-10 if dtype == torch.float64 else 1e-6


def _weighted_(batch: _Batch, *, gamma: float | None) -> None:
    """Settle most groups from one pass of sums, solve the others on copies, then write z."""
    xs, ds = batch.xs, batch.ds
    scratch = _Scratch(xs, 3)
    roots = _lasso_start(batch, scratch) if gamma is None else _mcp_start(batch, gamma, scratch)
    _solve_open_groups(xs, ds, roots)
    one = torch.ones((), dtype=xs[0].dtype, device=xs[0].device)
    for x, d, omega in zip(xs, ds, _views(roots.write_weights(), xs)):
        x.addcdiv_(x, torch.addcmul(one, d, omega, out=scratch.views(x)[0]), value=-1)


def _lasso_start(batch: _Batch, scratch: _Scratch) -> _Roots:
    """θ from moments about ρ = ‖x‖: certified roots and certain zeros settle most groups.

    With r_i = 1/(ρ + τ/d_i) the moments n_k = Σ x_i² r_i^(2+k) give the root (see
    :func:`_moment_root`) and also bound F(0) = Σ x_i² r_i² / (1 − ρ r_i)², the zero test
    (‖Dx‖ ≤ τ ⟺ F(0) ≤ 1): (1 − ρr)⁻² is convex on [0, r_max], so F(0) ≤ n_0 (1 + (g(r_max) − 1)
    r̄/r_max), g(r) = (1 − ρr)⁻², r̄ = n_1/n_0. Groups this bound does not decide, and whose root
    is not certified, are left open; the exact F(0) is then evaluated among the open groups.
    """
    sums: list[list[Tensor]] = [[] for _ in range(7)]
    taus = [torch.full((), tau, dtype=x.dtype, device=x.device) for x, tau in zip(batch.xs, batch.taus)]
    for x, d, tau in zip(batch.xs, batch.ds, taus):
        s, r, q = scratch.views(x)
        a = group_sum(torch.mul(x, x, out=s))
        torch.div(d, torch.addcmul(tau, d, _bcast(a.sqrt(), x), out=r), out=r)  # r = 1/(ρ + τ/d)
        torch.mul(x, r, out=q)
        values = [a, _group_max(r), group_sum(q.square_()), *(group_sum(q.mul_(r)) for _ in range(4))]
        for acc, v in zip(sums, values):
            acc.append(v)
    A, r_max, *n = (torch.cat(v) for v in sums)
    tol, eps = _tol(A.dtype), torch.finfo(A.dtype).eps
    rho = A.sqrt()
    rbar = n[1] / n[0]
    chord = (1 - rho * r_max).clamp(min=0.0) ** -2 - 1
    zero = (A == 0) | (n[0] * (1 + chord * rbar / r_max) * (1 + 8 * eps) <= 1)  # F(0) ≤ 1 for certain
    lo, theta, certified = _moment_root(rho, n, tol)
    theta, lo = torch.where(zero, 0.0, theta), torch.where(zero, 0.0, lo)
    return _Roots(theta, lo, rho, zero | certified, _per_group(batch.xs, batch.taus), None, tol)


def _moment_root(rho: Tensor, n: Sequence[Tensor], tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """A lower bound of the lasso root, an estimate, and whether the estimate is certified.

    With r_i = 1/(ρ + τ/d_i) ∈ (0, 1/ρ], F(ρ + δ) = ∫ (1 + δr)⁻² dν(r) for ν = Σ x_i² r_i² δ(r_i),
    whose moments are n_k = Σ x_i² r_i^(2+k), k ≤ 4. The 2-node Gauss rule of ν (from n_0..n_3)
    gives F̃ ≤ F ≤ F̃ + E, E = 5 δ⁴ ∫π² dν · max(1, ρ/θ)⁶ (π the rule's node polynomial; the
    4th derivative of (1 + δr)⁻² is positive and at most 120 δ⁴ max(1, ρ/θ)⁶ on [0, 1/ρ]). When
    the rule degenerates (nearly constant d) the 1-node rule (Jensen) and E = 3 δ² n_0 Var(r)
    max(1, ρ/θ)⁴ take over. F̃'s root is a lower bound of F's; shifted right by E/(2|F̃'|), F is
    within about E/2 of 1, certified when that plus rounding is within tol. F̃^(-1/2) is
    concave, so Newton's method on it from δ = 0 converges fast and from the left of the root.
    Float64 arithmetic on the per-group vectors.
    """
    eps = torch.finfo(n[0].dtype).eps
    n0, n1, n2, n3, n4 = (v.double() for v in n)
    rho = rho.double()
    rbar = n1 / n0
    det = n0 * n2 - n1 * n1
    a = (n1 * n2 - n0 * n3) / det
    b = (n1 * n3 - n2 * n2) / det
    disc = (a * a / 4 - b).sqrt()
    r1, r2 = -a / 2 + disc, -a / 2 - disc
    w1 = (n1 - r2 * n0) / (r1 - r2)
    two = (det > 64 * eps * n0 * n2) & (r2 >= 0) & (r1 > r2) & (r1 * rho <= 1) & (w1 > 0) & (w1 < n0)
    r1, r2, w1 = torch.where(two, r1, rbar), torch.where(two, r2, rbar), torch.where(two, w1, n0)
    w2 = n0 - w1
    pi2 = (n4 + a * n3 + b * n2).abs() + 16 * eps * (n4 + a.abs() * n3 + b.abs() * n2)
    var = (n2 / n0 - rbar * rbar).abs() + 64 * eps * n2 / n0
    coef = torch.where(two, 5 * pi2, 3 * n0 * var)
    power = torch.where(two, 4.0, 2.0)

    def model(delta: Tensor) -> tuple[Tensor, Tensor]:
        """F̃(ρ + δ) and ψ̃ = −F̃'/2."""
        u1, u2 = 1 / (1 + delta * r1), 1 / (1 + delta * r2)
        return w1 * u1 * u1 + w2 * u2 * u2, w1 * r1 * u1**3 + w2 * r2 * u2**3

    delta = torch.zeros_like(rho)
    for _ in range(4):
        f, psi = model(delta)
        delta = torch.maximum(delta + f * (f.sqrt() - 1) / psi, -rho)
    f, psi = model(delta)
    theta = rho + delta
    err = coef * delta.abs() ** power * (rho / theta).clamp(min=1.0) ** (power + 2)
    estimate = theta + err / (4 * psi)
    certified = ((f - 1).abs() <= eps) & (0.6 * err + 2 * eps <= tol) & (theta > 0)
    dtype = n[0].dtype
    lo = theta.nan_to_num(0.0).clamp(min=0.0).to(dtype)
    return lo, torch.where(certified, estimate, lo).to(dtype), certified


def _mcp_start(batch: _Batch, gamma: float, scratch: _Scratch) -> _Roots:
    """Keep branch from ‖x‖, zero branch from ‖Dx‖; the other groups start from θ = 0."""
    a, b = [], []
    for x, d in zip(batch.xs, batch.ds):
        s, t, _ = scratch.views(x)
        a.append(group_sum(torch.mul(x, x, out=s)))
        b.append(group_sum(torch.mul(x, d, out=t).square_()))
    A, B = torch.cat(a), torch.cat(b)
    xs = batch.xs
    hi = _per_group(xs, [gamma * lam for lam in batch.lams])
    tau = _per_group(xs, batch.taus)
    keep = A > hi * hi
    zero = (B <= tau * tau) & ~keep
    theta = torch.where(keep, hi, 0.0)
    mu = _per_group(xs, [a / gamma for a in batch.alphas])
    return _Roots(theta, torch.zeros_like(hi), hi, zero | keep, tau, mu, _tol(A.dtype), keep)


def _evaluate(xs: Sequence[Tensor], ds: Sequence[Tensor], roots: _Roots, scratch: _Scratch) -> tuple[Tensor, Tensor]:
    """F(θ) and ψ(θ) = −F'(θ)/2 = Σ (d_i x_i)² e_i / (θ e_i + τ)³ for every group."""
    F, psi = [], []
    mus = [None] * len(xs) if roots.mu is None else _views(roots.mu, xs)
    for x, d, th, ka, mu in zip(xs, ds, _views(roots.theta, xs), _views(roots.kappa(), xs), mus):
        den, q, e = scratch.views(x)
        torch.addcmul(ka, d, th, out=den)
        if mu is None:
            e = torch.div(d, den, out=den)  # e / (θ e + τ) with e = d
            torch.mul(x, e, out=q)
        else:
            torch.mul(x, d, out=q).div_(den)
            torch.sub(d, mu, out=e).div_(den)
        F.append(group_sum(q.square_()))
        psi.append(group_sum(q.mul_(e)))
    return torch.cat(F), torch.cat(psi)


def _solve_open_groups(xs: Sequence[Tensor], ds: Sequence[Tensor], roots: _Roots) -> None:
    """Solve the open groups' θ on copies of their slices (one host sync to list them)."""
    open_idx = torch.nonzero(~roots.done).flatten()
    if open_idx.numel() == 0:
        return
    cx, cd, order = _gather(xs, ds, open_idx.tolist())
    order = torch.tensor(order, device=open_idx.device)
    sub = roots.subset(order)
    scratch = _Scratch(cx, 3)
    for k in range(_MAX_EVALS):
        sub.update(*_evaluate(cx, cd, sub, scratch))
        if (k + 1) % _CHECK_EVERY == 0 and bool(sub.done.all()):
            break
    roots.theta = roots.theta.index_copy(0, order, sub.theta)


def _gather(
    xs: Sequence[Tensor], ds: Sequence[Tensor], open_idx: list[int]
) -> tuple[list[Tensor], list[Tensor], list[int]]:
    """Copy the open groups' slices ``x[:, j]`` and ``d[:, j]`` out, one copy per source tensor.

    Returns the copies of x and d and the flat indices of their groups, in order.
    """
    bounds = list(accumulate((x.shape[1] for x in xs), initial=0))
    by_tensor: dict[int, list[int]] = {}
    for g in open_idx:
        by_tensor.setdefault(bisect_right(bounds, g) - 1, []).append(g)
    cx, cd, order = [], [], []
    for i, flat in by_tensor.items():
        local = torch.tensor([g - bounds[i] for g in flat], device=xs[i].device)
        cx.append(xs[i].index_select(1, local))
        cd.append(ds[i].index_select(1, local))
        order.extend(flat)
    return cx, cd, order
