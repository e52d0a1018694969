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

How the weighted operators work (vectorised over all groups of all tensors, which sit in one
flat vector; no Python loop over groups, nor over tensors beyond one call per op):

1. One pass of sums over each tensor. Lasso: ‖x‖², max r_i and the moments n_k = Σ x_i² r_i^(2+k),
   k ≤ 4, of r_i = 1/(ρ + τ/d_i) about ρ = ‖x‖₂ ≥ θ. A Gauss rule in r gives a model of F with
   an error bound (see :func:`_moment_root`) and a bound on F(0) (the zero test); the groups
   whose model root is certified, |F − 1| ≤ 0.6·tol with the rounding of the sums, and the
   certain zeros are settled with no iteration over the tensors. MCP: ‖x‖² and ‖Dx‖² decide
   the keep and zero branches where they are clear by more than the rounding of the sums.
2. One host synchronisation lists the groups left ("open": MCP's root branch and the groups
   within rounding of a branch threshold, lasso groups that are not certified). Their slices
   are copied out as float64 rows (one matrix per group size) and decided exactly there:
   zero iff ‖Dx‖ ≤ τ, keep iff ‖x‖ > γλ_g (norms scaled against underflow). The roots are
   solved by Newton's method on h(θ) = F(θ)^(-1/2) — linear when d is constant, concave for the
   lasso — safeguarded by bisection in a bracket [lo, hi] that is valid by construction:
   lo = (‖Dx‖ − τ)/max_i e_i, where F(lo) ≥ ‖Dx‖²/(lo·max e + τ)² = 1, and hi = ‖x‖ (lasso,
   F(‖x‖) ≤ 1) or γλ_g (MCP, F(γλ_g) = ‖x‖²/(γλ_g)² ≤ 1); lo > 0 off the zero branch, so θ is
   never 0 there. Every evaluation of F moves the end on its side. The moment model's root is
   only a starting point, clamped into the bracket (it can lie right of the root: near the
   zero threshold its rounding is large against θ). F and F' accumulate in float64. A group
   is frozen once |F(θ) − 1| ≤ tol/10, or when the bracket or the Newton step is down to
   float64 resolution; convergence is checked on the host after 4, 8, 16, 32 and 64
   (``_MAX_EVALS``) evaluations, and a group still open then is reported with a
   ``RuntimeWarning`` (not seen in the tests).
3. The write: z_i = x_i / (1 + s/d_i), s = (τ − μθ)/θ ≥ 0 (μ = α/γ for MCP, 0 for the lasso),
   i.e. z = x·ωd/(1 + ωd) with ω = 1/s, with no cancellation however hard the group is shrunk
   (every term is positive), exactly 0 when θ = 0 (s = ∞) and exactly x when s = 0. The lasso
   writes every tensor in one pass of its dtype. MCP leaves keep groups untouched, multiplies
   the zero groups by 0 (in the tensors that have any) and copies the open ones back from
   their float64 rows.

On the CPU the weighted lasso's steps 1 and 3 run in the C kernel of :mod:`optim.kernel`
(float32/float64 tensors, and float16/bfloat16 ones through their float32 copies; contiguous
or channels-last), one tile of whole groups at a time
while the tile is in cache, with these rules ported one to one (the torch code here is their
reference, and runs on other devices and without a compiler). The kernel sums in double (its
fused pass adds the terms of two rows in the dtype first, and forms r as d/(ρd + τ)), writes
z = x·d/(d + s), and expands the moments about any ρ ≥ 0 it is given
(:func:`adam_group_l1_l2_` fuses Adam's update into the moment pass, about the last step's
norms); a group its moments do not certify gets a second round about the model's root before
it goes to the float64 rows. ``GSMTL_PROX_KERNEL=0`` turns it off.

Guarantees, with tol = 1e-10 in float64 and 1e-6 in float32 (float16/bfloat16 tensors are
solved in float32 and rounded back), the same for both implementations:

- the branches are exact: z = 0 iff ‖Dx‖ ≤ τ (and, MCP, z = x iff ‖x‖ > γλ_g), evaluated in
  float64 wherever the sums in the tensor's dtype leave doubt (within 32 ulps of a threshold);
- for every other group |F(‖z‖₂) − 1| ≤ tol, F evaluated exactly from the inputs' values. Open
  groups: root to tol/10 in float64, then the write's rounding (≤ 4 ulps of the dtype in F).
  Certified groups: the model error is bounded rigorously; the rounding of the sums in the
  tensor's dtype is budgeted as 3 ulps of n_0 (plus 16·|δ|r̄ ulps for n_1 and the underflow of
  denormal terms) — enough for float64 by far, and in float32 a rounding model rather than a
  worst case: if every rounding of a group dominated by one entry went the same way (about 5
  ulps), a float32 group could reach about 1.3e-6. On the adversarial tests (group sizes 1 to
  1000, d over 12 decades, one entry up to 1e6× the rest, denormals) the largest seen is
  4.5e-11 (float64) and 2.3e-7 (float32);
- groups whose sums underflow (denormal entries) or overflow are never certified from the
  moments but solved on the float64 rows (values beyond float64's range are not supported);
  z = 0 is also returned when s = τ/θ overflows the dtype, where every |z_i| ≤ θ < τ/finfo.max;
- tensors with no elements, or no groups (shape ``(o, 0, …)``), pass through untouched.

Host synchronisations: one per call of a weighted operator and device/dtype (listing the open
groups), plus one per convergence check while open groups iterate (none when there are none,
the usual case in training: see ``benchmarks/bench_optimizer.py``). The CPU has none to
speak of; there the kernel's certificate leaves next to no group open.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

import torch
from torch import Tensor

from optim import kernel

_MAX_EVALS = 64
_CHECKS = frozenset({4, 8, 16, 32, _MAX_EVALS})
_F64 = torch.float64
_DENORMAL = torch.finfo(_F64).tiny * torch.finfo(_F64).eps  # the smallest positive float64


def prox_group_l1_l2_(
    tensors: Sequence[Tensor],
    *,
    alpha: float | Sequence[float],
    lam: float,
    denoms: Sequence[Tensor] | None = None,
    reweight: bool = True,
    sqrt_offsets: Sequence[float] | None = None,
) -> None:
    """Apply the group-lasso proximal map in place (metric ``denoms``, or plain when None).

    Args:
        tensors: tensors with at least 2 dims; groups are the slices along dim 1. Empty tensors
            (no elements or no groups) are left as they are.
        alpha: step α, one float or one per tensor.
        lam: penalty strength λ ≥ 0.
        denoms: per-element metric d > 0 shaped like ``tensors`` (Adam's denominators), read only.
        reweight: scale λ by √(group size).
        sqrt_offsets: one c per tensor when ``denoms`` holds Adam's second moments v: the metric
            is then d = √v + c, formed where it is read (no buffer of d).
    """
    for batch in _batches(tensors, denoms, alpha, lam, reweight, sqrt_offsets):
        if batch.ds is None:
            _plain_l1_l2_(batch)
        else:
            batch.materialise()
            (_kernel_lasso_ if kernel.usable(batch.xs, batch.ds) else _weighted_lasso_)(batch)
        batch.write_back()


def prox_group_mcp_(
    tensors: Sequence[Tensor],
    *,
    alpha: float | Sequence[float],
    lam: float,
    gamma: float,
    denoms: Sequence[Tensor] | None = None,
    reweight: bool = True,
    sqrt_offsets: Sequence[float] | None = None,
) -> None:
    """Apply the group-MCP proximal map in place (metric ``denoms``, or plain when None).

    Args are those of :func:`prox_group_l1_l2_`, plus ``gamma`` > 0, the MCP concavity.
    """
    if not gamma > 0:
        raise ValueError(f"Invalid gamma value: {gamma}")
    for batch in _batches(tensors, denoms, alpha, lam, reweight, sqrt_offsets):
        if batch.ds is None:
            _plain_mcp_(batch, gamma)
        else:
            batch.materialise()
            _weighted_mcp_(batch, gamma)
        batch.write_back()


def adam_group_l1_l2_(
    tensors: Sequence[Tensor],
    *,
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    norms: Sequence[Tensor | None],
    alpha: Sequence[float],
    sqrt_offsets: Sequence[float],
    lam: float,
    reweight: bool,
    decay: float,
    weight_decay: float,
    betas: tuple[float, float],
) -> list[Tensor] | None:
    """Adam's update, then the group-lasso prox in its metric d = √v + c, tile by tile (the C kernel).

    The update is :class:`optim.kernel.AdamUpdate`'s with step α (per tensor), which is also
    the prox's step; ``norms`` are the moments' expansion points this function returned at
    the last step (or None). Returns those for the next step, the new group norms ‖z‖ (one
    tensor per tensor, in its dtype: what ``load_state_dict`` restores them as), or None,
    having changed nothing, when the kernel does not take these tensors (the caller then
    runs Adam and :func:`prox_group_l1_l2_`, whose result this is up to rounding).
    """
    live = [i for i, t in enumerate(tensors) if t.numel()]  # empty tensors (no elements or groups) pass untouched
    xs, gs, ms, vs, offsets, alphas, starts = (
        [seq[i] for i in live] for seq in (tensors, grads, exp_avgs, exp_avg_sqs, sqrt_offsets, alpha, norms))
    taus = [a * (lam * math.sqrt(group_size(x)) if reweight else lam) for a, x in zip(alphas, xs)]
    out = [t.new_zeros(t.shape[1]) for t in tensors]
    if not xs:
        return out
    if not all(tau > 0 for tau in taus) or not kernel.usable(xs, gs, ms, vs):
        return None
    update = kernel.AdamUpdate(grads=gs, exp_avgs=ms, exp_avg_sqs=vs, offsets=offsets, alphas=alphas, norms=starts,
                               decay=decay, weight_decay=weight_decay, beta1=betas[0], beta2=betas[1])
    result = kernel.weighted_lasso(xs, None, taus, _tol(xs[0].dtype), adam=update)
    if result is None:
        return None
    theta = _solve_open_(xs, vs, taus, *result, offsets)
    for i, part in zip(live, theta.split([x.shape[1] for x in xs])):
        out[i] = part.to(tensors[i].dtype, copy=True)  # its own storage: saved per parameter
    return out


def group_sum(t: Tensor) -> Tensor:
    """Sum over every dim but 1: one value per group ``t[:, j, ...]``.

    Sums over dim 0 first (torch's cascade summation there is accurate to about one ulp).
    """
    s = t.sum(0)
    return s.view(-1) if s.numel() == t.shape[1] else s.flatten(1).sum(1)


def _group_max(t: Tensor) -> Tensor:
    """Max over every dim but 1."""
    m = t.amax(0)
    return m.view(-1) if m.numel() == t.shape[1] else m.flatten(1).amax(1)


def group_size(t: Tensor) -> int:
    """Number of elements of one group ``t[:, j, ...]``; 0 for a tensor with no groups (``shape[1] == 0``)."""
    return t.numel() // t.shape[1] if t.shape[1] else 0


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
    offsets: list[float] | None = None  # when set, ``ds`` holds Adam's v and d = √v + offset

    def materialise(self) -> None:
        """Form d = √v + offset in a kept buffer, for the code that reads ``ds`` as d."""
        if self.offsets is None:
            return
        buffer = _kept(("metric", self.ds[0].dtype, self.ds[0].device), sum(v.numel() for v in self.ds))
        views = buffer.split([v.numel() for v in self.ds])
        self.ds = [torch.sqrt(v, out=b.view(v.shape)).add_(c) for v, b, c in zip(self.ds, views, self.offsets)]
        self.offsets = None

    def write_back(self) -> None:
        for target, x in zip(self.targets, self.xs):
            if x is not target:
                target.copy_(x)

    def per_group(self, values: Sequence[float]) -> Tensor:
        """One float64 vector: ``values[i]`` repeated for every group of tensor i."""
        counts = torch.tensor([x.shape[1] for x in self.xs])
        flat = torch.repeat_interleave(torch.tensor(values, dtype=_F64), counts)
        return flat.to(self.xs[0].device)

    def sizes(self) -> Tensor:
        """Group sizes, one per group (float64)."""
        return self.per_group([group_size(x) for x in self.xs])


def _batches(
    tensors: Sequence[Tensor],
    denoms: Sequence[Tensor] | None,
    alpha: float | Sequence[float],
    lam: float,
    reweight: bool,
    sqrt_offsets: Sequence[float] | None = None,
) -> list[_Batch]:
    """Validate, drop empty tensors and those with τ = 0 (the identity), group by device and dtype."""
    tensors = list(tensors)
    alphas = [float(alpha)] * len(tensors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(tensors):
        raise ValueError(f"alpha has {len(alphas)} values for {len(tensors)} tensors")
    if denoms is not None and len(denoms) != len(tensors):
        raise ValueError(f"denoms has {len(denoms)} tensors for {len(tensors)} tensors")
    if sqrt_offsets is not None and (denoms is None or len(sqrt_offsets) != len(tensors)):
        raise ValueError("sqrt_offsets needs denoms and one offset per tensor")
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
        if t.numel() == 0:
            continue
        lam_g = lam * math.sqrt(group_size(t)) if reweight else lam
        tau = alphas[i] * lam_g
        if tau == 0:
            continue
        work = t if t.dtype in (torch.float32, _F64) else t.float()
        batch = by_key.setdefault((t.device, t.dtype), _Batch(
            [], [], None if denoms is None else [], [], [], [], None if sqrt_offsets is None else []))
        batch.targets.append(t)
        batch.xs.append(work)
        if batch.ds is not None:
            batch.ds.append(denoms[i].to(work.dtype))
        if batch.offsets is not None:
            batch.offsets.append(float(sqrt_offsets[i]))
        batch.taus.append(tau)
        batch.alphas.append(alphas[i])
        batch.lams.append(lam_g)
    return list(by_key.values())


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """View a per-group vector so that it broadcasts against ``like`` (groups along dim 1)."""
    return v.view((1, -1) + (1,) * (like.ndim - 2))


def _views(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat per-group vector into views that broadcast against each tensor."""
    return [_bcast(part, t) for part, t in zip(flat.split([t.shape[1] for t in like]), like)]


_CACHE = threading.local()


def _kept(key: tuple, n: int) -> Tensor:
    """A flat buffer of at least ``n`` elements of dtype ``key[1]`` on device ``key[2]``.

    On the CPU it is kept between calls (per thread and key, grown as needed): a fresh large
    allocation is returned to the OS on release and page-faults again at every step. Elsewhere
    (CUDA's caching allocator) it is allocated per call.
    """
    dtype, device = key[1], key[2]
    if device.type != "cpu":
        return torch.empty(n, dtype=dtype, device=device)
    cache: dict[tuple, Tensor] = _CACHE.__dict__.setdefault("buffers", {})
    if key not in cache or cache[key].numel() < n:
        cache.pop(key, None)
        cache[key] = torch.empty(n, dtype=dtype)
    return cache[key][:n]


class _Scratch:
    """Flat buffers viewed in the shape of each tensor (no per-tensor allocations; see :func:`_kept`)."""

    def __init__(self, like: Sequence[Tensor], count: int) -> None:
        n = max(t.numel() for t in like)
        dtype, device = like[0].dtype, like[0].device
        self.buffers = [_kept(("scratch", dtype, device, i), n) for i in range(count)]

    def views(self, t: Tensor) -> list[Tensor]:
        return [b[: t.numel()].view(t.shape) for b in self.buffers]


def _sq_norms(xs: Sequence[Tensor], scratch: _Scratch) -> Tensor:
    """‖x_g‖² of every group of every tensor, as one flat vector."""
    return torch.cat([group_sum(torch.mul(x, x, out=scratch.views(x)[0])) for x in xs])


def _tol(dtype: torch.dtype) -> float:
    """The guaranteed |F(‖z‖) − 1| (see the module docstring)."""
    return 1e-10 if dtype == _F64 else 1e-6


def _margin(dtype: torch.dtype) -> float:
    """Relative rounding allowed for the sums of one pass: decisions closer than this go to float64."""
    return 32 * torch.finfo(dtype).eps


# --------------------------------------------------------------------------- plain metric
def _plain_l1_l2_(batch: _Batch) -> None:
    norm = _sq_norms(batch.xs, _Scratch(batch.xs, 1)).sqrt_()
    tau = batch.per_group(batch.taus).to(norm.dtype)
    factor = torch.where(norm > tau, 1 - tau / norm, 0.0)
    for x, f in zip(batch.xs, _views(factor, batch.xs)):
        x.mul_(f)


def _plain_mcp_(batch: _Batch, gamma: float) -> None:
    """Firm thresholding: keep above γλ_g, zero below τ, (‖x‖ − τ)/(1 − α/γ) between."""
    norm = _sq_norms(batch.xs, _Scratch(batch.xs, 1)).sqrt_()
    dtype = norm.dtype
    tau = batch.per_group(batch.taus).to(dtype)
    radius = batch.per_group([gamma * lam for lam in batch.lams]).to(dtype)
    slope = batch.per_group([1 - a / gamma for a in batch.alphas]).to(dtype).clamp_(min=torch.finfo(dtype).tiny)
    shrunk = ((1 - tau / norm) / slope).clamp_(max=1.0)
    factor = torch.where(norm > radius, 1.0, torch.where(norm > tau, shrunk, 0.0))
    for x, f in zip(batch.xs, _views(factor, batch.xs)):
        x.mul_(f)


# --------------------------------------------------------------------------- weighted lasso
def _weighted_lasso_(batch: _Batch) -> None:
    """Moments settle most groups, the others are solved on float64 rows, then one pass writes z."""
    xs, ds = batch.xs, batch.ds
    dtype, device = xs[0].dtype, xs[0].device
    scratch = _Scratch(xs, 2)
    one = torch.ones((), dtype=dtype, device=device)
    sums: list[list[Tensor]] = [[] for _ in range(8)]
    for x, d, tau in zip(xs, ds, batch.taus):
        s, r = scratch.views(x)
        a = group_sum(torch.mul(x, x, out=s))
        rho = a.sqrt()
        torch.addcdiv(_bcast(rho, x), one, d, value=tau, out=r).reciprocal_()  # r = 1/(ρ + τ/d)
        s.mul_(r).mul_(r)
        values = [a, rho, _group_max(r), group_sum(s)]
        values += [group_sum(s.mul_(r)) for _ in range(4)]
        for acc, v in zip(sums, values):
            acc.append(v)
    A, rho, r_max, *n = (torch.cat(v).to(_F64) for v in sums)
    tau = batch.per_group(batch.taus)
    theta, start, _, settled = _moment_root(A, rho, r_max, n, batch.sizes(), dtype)
    open_idx = torch.nonzero(~settled).flatten().cpu()  # the one host synchronisation
    if len(open_idx):
        sel = open_idx.to(device)
        theta = _Rows.gather(xs, ds, open_idx, tau[sel], start[sel]).solved().roots(theta)
    s_all = torch.where(theta > 0, tau / theta, torch.inf).to(dtype)  # z = x / (1 + s/d)
    for x, d, s_b in zip(xs, ds, _views(s_all, xs)):
        buf = scratch.views(x)[0]
        x.div_(torch.addcdiv(one, s_b, d, out=buf))


def _kernel_lasso_(batch: _Batch) -> None:
    """The C kernel settles and writes most groups tile by tile; the open ones are solved on float64 rows."""
    xs = batch.xs
    result = kernel.weighted_lasso(xs, batch.ds, batch.taus, _tol(xs[0].dtype))
    if result is None:  # a group too large for the kernel's scratch
        _weighted_lasso_(batch)
        return
    _solve_open_(xs, batch.ds, batch.taus, *result)


def _solve_open_(
    xs: Sequence[Tensor], ds: Sequence[Tensor], taus: Sequence[float], theta: Tensor, start: Tensor,
    settled: Tensor, offsets: Sequence[float] | None = None,
) -> Tensor:
    """Solve and write the groups the kernel left open (on float64 rows); θ of every group."""
    open_idx = torch.nonzero(~settled).flatten()
    if not len(open_idx):
        return theta
    counts = torch.tensor([x.shape[1] for x in xs])
    tau = torch.repeat_interleave(torch.tensor(taus, dtype=_F64), counts)[open_idx]
    rows = _Rows.gather(xs, ds, open_idx, tau, start[open_idx], offsets=offsets).solved()
    rows.scatter(xs)
    return rows.roots(theta)


def _moment_root(
    A: Tensor, rho: Tensor, r_max: Tensor, n: Sequence[Tensor], size: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """θ of the groups the moments settle, a start for the others, the zeros, and which are settled.

    With r_i = 1/(ρ + τ/d_i) ∈ (0, 1/ρ], F(ρ + δ) = ∫ g dν, g(r) = (1 + δr)⁻², for
    ν = Σ x_i² r_i² δ(r_i), whose moments are n_k = Σ x_i² r_i^(2+k). The model F̃ is the 2-node
    rule whose nodes are the roots of π(r) = r² + a r + b, (a, b) solving the Gauss conditions
    from n_0..n_3, and whose weights match n_0 and n_1 exactly. With H the cubic Hermite
    interpolant of g at the nodes, F − F̃ = ∫(g − H) dν + (∫H dν − F̃): the first term lies in
    [0, E], E = 5 δ⁴ m⁶ ∫π² dν (g⁽⁴⁾ = 120 δ⁴ (1 + δr)⁻⁶ > 0, and m = max(1, ρ/θ) bounds
    (1 + δr)⁻¹ on [0, 1/ρ]; ∫π² dν is expanded in n_0..n_4, valid for any a, b); the second
    is the rule's defect on the quadratic and cubic parts of H, bounded by
    (3δ² m⁴ + 4|a||δ|³ m⁵)|e_2| + 4|δ|³ m⁵ |e_3|, e_2 and e_3 the residuals of the Gauss
    conditions — so a rule computed from ill-conditioned sums (one dominant entry) is trusted
    no further than its residuals show. When the rule degenerates (nearly constant d) the
    1-node rule (Jensen) takes over: E = 3 δ² m⁴ n_0 Var(r). The root of F̃, shifted right by
    E/(2|F̃'|), has F within 0.6 E + 1.2·defect of 1; it is certified when that plus the
    rounding of the sums is within 0.6·tol. Newton's method on F̃^(-1/2) (concave) from δ = 0
    converges in a few steps. Float64 arithmetic on the per-group vectors; ``eps`` is that of
    the sums' dtype, and every residual carries a floor of a few eps for their rounding.

    The zero test: F(0) = Σ x_i² r_i² (1 − ρ r_i)⁻² and (1 − ρr)⁻² is convex on [0, r_max], so
    F(0) ≤ n_0 (1 + ((1 − ρ r_max)⁻² − 1) r̄/r_max), r̄ = n_1/n_0; a group is zero when that
    bound, with the rounding and underflow of the sums, is at most 1. 1 − ρ r_max cancels when
    ρ d_max ≫ τ (its rounding is below 16 eps, absolute, as that of 1 − ρr̄ below), so the bound
    takes it 16 eps lower: a computed gap of a few eps can stand for a true one of 1e-11, whose
    (1 − ρ r_max)⁻² a first-order margin (1 + 16 eps/gap) missed by eight decades. By Jensen's inequality
    F(0) ≥ n_0 (1 − ρ r̄)⁻²: a group is certified non-zero only when that exceeds 1 with the
    rounding, so that a group within rounding of the threshold is decided on the float64 rows
    however its root looks. 1 − ρr̄ cancels when ρd ≫ τ (its rounding is below 16 eps, absolute),
    so the bound used is n_0 (1 − 32 eps) / (1 − ρr̄ + 16 eps)²: still huge for the groups the prox
    barely shrinks, which a first-order margin (1 − 32 eps/(1 − ρr̄)) sent to the rows.

    Any expansion point ρ ≥ 0 gives valid bounds (r_i ≤ 1/ρ, and (1 + δr)⁻¹ ≤ m with
    m = max(1, ρ/θ) for either sign of δ = θ − ρ); ρ = ‖x‖ here, the C kernel
    (:mod:`optim.kernel`) also expands about the last step's norms and about the model's root. Groups neither certified
    nor zero are left to :class:`_Rows`, which decides them exactly; their model root is only
    a starting point there.
    """
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny * eps  # the smallest denormal: the absolute rounding of a term
    n0, n1, n2 = n[:3]
    rbar = n1 / n0
    var = (n2 / n0 - rbar * rbar).abs() + 64 * eps * n2 / n0
    two = torch.zeros_like(A, dtype=torch.bool)
    r1 = r2 = rbar
    w1 = n0
    if len(n) == 5:
        n3, n4 = n[3:]
        det = n0 * n2 - n1 * n1
        a = (n1 * n2 - n0 * n3) / det
        b = (n1 * n3 - n2 * n2) / det
        disc = (a * a / 4 - b).sqrt()
        r1, r2 = -a / 2 + disc, -a / 2 - disc
        w1 = (n1 - r2 * n0) / (r1 - r2)
        two = (det > 64 * eps * n0 * n2) & (r2 >= 0) & (r1 > r2) & (r1 * rho <= 1) & (w1 > 0) & (w1 < n0)
        r1, r2, w1 = torch.where(two, r1, rbar), torch.where(two, r2, rbar), torch.where(two, w1, n0)
        # How far the computed rule (nodes: the roots of r² + a r + b) is from Gauss's for the
        # sums' true values: the residuals of its orthogonality conditions, and ∫π² dν expanded
        # (valid for any a, b), each with the rounding of the sums.
        a_, b_ = a.abs(), b.abs()
        e2 = (n2 + a * n1 + b * n0).abs() + 8 * eps * (n2 + a_ * n1 + b_ * n0)
        e3 = (n3 + a * n2 + b * n1).abs() + 12 * eps * (n3 + a_ * n2 + b_ * n1)
        pi2 = (n4 + 2 * a * n3 + (a * a + 2 * b) * n2 + 2 * a * b * n1 + b * b * n0).abs() + 16 * eps * (
            n4 + 2 * a_ * n3 + (a * a + 2 * b_) * n2 + 2 * a_ * b_ * n1 + b * b * n0)
    w2 = n0 - w1

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
    m = (rho / theta).clamp(min=1.0)  # bounds (1 + δr)⁻¹ on [0, 1/ρ]
    ad = delta.abs()
    # F − F̃ ∈ [−defect, one_sided + defect]
    one_sided = 3 * ad**2 * m**4 * n0 * var
    defect = 2 * ad * m**3 * (n1 - rbar * n0).abs()
    if len(n) == 5:
        one_sided = torch.where(two, 5 * ad**4 * m**6 * pi2, one_sided)
        defect = torch.where(two, (3 * ad**2 * m**4 + 4 * a.abs() * ad**3 * m**5) * e2 + 4 * ad**3 * m**5 * e3, defect)
    under = 2 * size * tiny * (r_max * r_max + r_max + 1)  # absolute underflow of the n_0 sum
    rounding = (3 + 16 * ad * rbar) * eps + under / n0  # of n_0, n_1 themselves (see the module docstring)
    # F(0) ≥ n_0 / (1 − ρr̄)² (Jensen), with 1 − ρr̄ at most jensen + 16 eps (see the docstring)
    jensen = (1 - rho * rbar).clamp(min=0.0)
    lower = n0 * (1 - _margin(dtype)) / (jensen + 16 * eps) ** 2
    certified = (
        ((f - 1).abs() <= 4 * eps) & (0.6 * one_sided + 1.2 * defect + rounding <= 0.6 * _tol(dtype))
        & (theta > 0) & (size * torch.finfo(dtype).tiny / eps <= A)  # no term of ‖x‖² near the underflow
        & (lower > 1)  # not within rounding of the zero branch
    )
    gap = (1 - rho * r_max - 16 * eps).clamp(min=0.0)  # at most the true 1 − ρ r_max (see the docstring)
    bound = (n0 + under) * (1 + torch.where(r_max > 0, (gap**-2 - 1) * rbar / r_max, torch.inf))
    zero = bound * (1 + _margin(dtype)) <= 1  # F(0) ≤ 1 for certain
    estimate = (theta + one_sided / (4 * psi)).nan_to_num(0.0)
    theta_out = torch.where(certified & ~zero, estimate, 0.0)
    start = theta.nan_to_num(0.0, posinf=0.0, neginf=0.0).clamp(min=0.0)
    return theta_out, start, zero, zero | certified


# --------------------------------------------------------------------------- weighted MCP
def _weighted_mcp_(batch: _Batch, gamma: float) -> None:
    """Keep and zero branches from ‖x‖ and ‖Dx‖ where they are clear; the rest on float64 rows.

    Keep groups are left as they are (tensors without zero groups are not written at all), zero
    groups are multiplied by 0, the others get their float64 rows.
    """
    xs, ds = batch.xs, batch.ds
    dtype, device = xs[0].dtype, xs[0].device
    scratch = _Scratch(xs, 1)
    a, b = [], []
    for x, d in zip(xs, ds):
        (s,) = scratch.views(x)
        a.append(group_sum(torch.mul(x, x, out=s)))
        b.append(group_sum(torch.mul(x, d, out=s).square_()))
    A, B = torch.cat(a).to(_F64), torch.cat(b).to(_F64)
    hi = batch.per_group([gamma * lam for lam in batch.lams])
    tau = batch.per_group(batch.taus)
    m = _margin(dtype)
    slack = batch.sizes() * torch.finfo(dtype).tiny  # underflow of the terms
    keep = (A - slack) * (1 - m) > hi * hi
    not_keep = (A + slack) * (1 + m) <= hi * hi
    zero = not_keep & ((B + slack) * (1 + m) <= tau * tau)
    code = torch.where(keep, 0, torch.where(zero, 1, 2))
    listed = torch.nonzero(code > 0).flatten()
    idx, codes = torch.stack([listed, code[listed]]).cpu()  # the one host synchronisation
    factors = _views((code != 1).to(dtype), xs)  # a multiply is much faster than index_fill_ on dim 1
    for t, _, _ in _by_tensor(idx[codes == 1], xs):
        xs[t].mul_(factors[t])
    open_idx = idx[codes == 2]
    if len(open_idx):
        sel = open_idx.to(device)
        mu = batch.per_group([al / gamma for al in batch.alphas])
        rows = _Rows.gather(xs, ds, open_idx, tau[sel], torch.zeros_like(tau[sel]), mu=mu[sel], hi=hi[sel])
        rows.solved().scatter(xs)


def _by_tensor(idx: Tensor, xs: Sequence[Tensor]) -> list[tuple[int, Tensor, Tensor]]:
    """Split sorted flat group indices (on the CPU) by tensor: (tensor, local indices, positions in idx)."""
    bounds = torch.tensor([0, *accumulate(x.shape[1] for x in xs)])
    cuts = torch.searchsorted(idx, bounds).tolist()
    return [(t, idx[a:b] - bounds[t], torch.arange(a, b)) for t, (a, b) in enumerate(pairwise(cuts)) if b > a]


# --------------------------------------------------------------------------- open groups
@dataclass
class _Bucket:
    """Open groups of one group size as float64 rows, with their root-finding state."""

    X: Tensor  # (G, n)
    D: Tensor
    tau: Tensor  # (G,)
    theta: Tensor
    mu: Tensor | None = None
    hi_mcp: Tensor | None = None
    parts: list[tuple[int, Tensor, int]] = field(default_factory=list)  # (tensor, local indices, first row)
    lo: Tensor = field(init=False)
    hi: Tensor = field(init=False)
    done: Tensor = field(init=False)
    zero: Tensor = field(init=False)
    keep: Tensor = field(init=False)
    Q: Tensor = field(init=False)

    def prepare(self) -> None:
        """Exact branches and the bracket (see the module docstring)."""
        self.Q = self.X * self.D
        norm_x, norm_q = _row_norms(self.X), _row_norms(self.Q)
        if self.mu is None:
            self.keep = torch.zeros_like(norm_x, dtype=torch.bool)
            self.zero = norm_q <= self.tau
            self.lo = ((norm_q - self.tau) / self.D.amax(1)).clamp(min=0.0)  # F(lo) ≥ 1
            self.hi = norm_x  # F(‖x‖) ≤ 1
        else:
            self.keep = norm_x > self.hi_mcp
            self.zero = ~self.keep & (norm_q <= self.tau)
            e_max = self.D.amax(1) - self.mu  # > 0 on the root branch, where F(γλ_g) ≤ 1 < F(0)
            self.lo = torch.where(e_max > 0, (norm_q - self.tau) / e_max, 0.0).clamp(min=0.0)  # F(lo) ≥ 1
            self.hi = self.hi_mcp.clone()
        # θ > 0 off the zero branch, however close F(0) is to 1 (z = 0 is only for ‖Dx‖ ≤ τ)
        self.lo = torch.minimum(self.lo.clamp(min=_DENORMAL), self.hi)
        # A non-finite group (a diverged step: the training loop reports it) has no root to seek; it stays non-finite.
        settled = self.zero | self.keep | ~(norm_x.isfinite() & norm_q.isfinite())
        self.theta = torch.where(settled, 0.0, torch.maximum(torch.minimum(self.theta, self.hi), self.lo))
        self.theta = torch.where(self.keep, self.hi, self.theta)
        self.done = settled

    def kappa(self) -> Tensor:
        """τ − μθ: with it θ e_i + τ = θ d_i + κ."""
        return self.tau if self.mu is None else self.tau - self.mu * self.theta

    def update(self, F: Tensor, psi: Tensor, tol: float) -> None:
        """Freeze the groups whose F(θ) is within tol of 1; one safeguarded Newton step on the others."""
        eps = torch.finfo(_F64).eps
        f = F - 1
        step = F * (F.sqrt() - 1) / psi
        active = ~self.done
        right = f > 0  # θ is left of the root
        self.lo = torch.where(active & right, torch.maximum(self.lo, self.theta), self.lo)
        self.hi = torch.where(active & ~right, torch.minimum(self.hi, self.theta), self.hi)
        stalled = (step.abs() <= 4 * eps * self.theta) | (self.hi - self.lo <= 4 * eps * self.hi)
        conv = active & ((f.abs() <= tol) | stalled)
        cand = self.theta + step
        ok = (psi > 0) & (cand >= self.lo) & (cand <= self.hi)
        new = torch.where(ok, cand, 0.5 * (self.lo + self.hi))
        self.theta = torch.where(active & ~conv, new, self.theta)
        self.done = self.done | conv

    def shrink(self) -> Tensor:
        """s with z = x / (1 + s/d): ∞ for zero groups, 0 for kept ones."""
        s = torch.where(self.theta > 0, self.kappa() / self.theta, torch.inf)
        return torch.where(self.keep, 0.0, torch.where(self.zero, torch.inf, s))


def _row_norms(rows: Tensor) -> Tensor:
    """‖row‖₂, scaled by the largest entry so that denormal rows do not underflow."""
    top = rows.abs().amax(1, keepdim=True)
    safe = torch.where(top > 0, top, 1.0)
    return (rows / safe).square().sum(1).sqrt() * top.squeeze(1)


def _evaluate(bucket: _Bucket) -> tuple[Tensor, Tensor]:
    """F(θ) and ψ(θ) = −F'(θ)/2 = Σ (d_i x_i)² e_i / (θ e_i + τ)³ of every row (float64)."""
    den = torch.addcmul(bucket.kappa()[:, None], bucket.D, bucket.theta[:, None])
    w = (bucket.Q / den).square_()
    e = bucket.D if bucket.mu is None else bucket.D - bucket.mu[:, None]
    return w.sum(1), (w * e / den).sum(1)


class _Rows:
    """The open groups of a batch, gathered as float64 rows, one bucket per group size."""

    def __init__(self, buckets: list[_Bucket], order: Tensor, tol: float) -> None:
        self.buckets = buckets
        self.order = order  # flat group index of every row, bucket after bucket
        self.tol = tol  # tol/10 of the batch's dtype: room for the rounding of the write

    @classmethod
    def gather(
        cls, xs: Sequence[Tensor], ds: Sequence[Tensor], open_idx: Tensor, tau: Tensor, start: Tensor, *,
        mu: Tensor | None = None, hi: Tensor | None = None, offsets: Sequence[float] | None = None,
    ) -> _Rows:
        """Copy the groups ``open_idx`` (sorted flat indices, on the CPU) out; the vectors are aligned with it.

        With ``offsets`` the ``ds`` are Adam's v, and the rows get d = √v + offset (in the tensors' dtype).
        """
        by_size: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        for part in _by_tensor(open_idx, xs):
            by_size.setdefault(group_size(xs[part[0]]), []).append(part)
        device = xs[0].device
        buckets, order = [], []
        for n, parts in by_size.items():
            xr, dr, placed, first = [], [], [], 0
            for t, local, _ in parts:
                local = local.to(device)
                xr.append(xs[t].transpose(0, 1)[local].reshape(len(local), n).to(_F64))
                d = ds[t].transpose(0, 1)[local]
                d = d if offsets is None else d.sqrt_().add_(offsets[t])
                dr.append(d.reshape(len(local), n).to(_F64))
                placed.append((t, local, first))
                first += len(local)
            pos = torch.cat([p for _, _, p in parts])
            sel = pos.to(device)
            bucket = _Bucket(torch.cat(xr), torch.cat(dr), tau[sel], start[sel],
                             None if mu is None else mu[sel], None if hi is None else hi[sel], placed)
            bucket.prepare()
            buckets.append(bucket)
            order.append(open_idx[pos])
        return cls(buckets, torch.cat(order), _tol(xs[0].dtype) / 10)

    def _newton(self) -> None:
        tol = self.tol
        for k in range(1, _MAX_EVALS + 1):
            for bucket in self.buckets:
                bucket.update(*_evaluate(bucket), tol)
            if k in _CHECKS and bool(torch.stack([b.done.all() for b in self.buckets]).all()):
                return
        left = int(sum(int((~b.done).sum()) for b in self.buckets))
        warnings.warn(f"prox: {left} groups did not reach |F(θ) − 1| ≤ {tol:g} in {_MAX_EVALS} evaluations",
                      RuntimeWarning, stacklevel=4)

    def solved(self) -> _Rows:
        """Find the roots (in place); returns self."""
        self._newton()
        return self

    def roots(self, theta: Tensor) -> Tensor:
        """``theta`` (per group of the batch) with the rows' roots put in (0 for zeros)."""
        roots = torch.cat([torch.where(b.zero, 0.0, b.theta) for b in self.buckets])
        return theta.index_copy(0, self.order.to(theta.device), roots)

    def scatter(self, xs: Sequence[Tensor]) -> None:
        """Write z = x / (1 + s/d) of every row into its tensor."""
        for bucket in self.buckets:
            z = bucket.X / (1 + bucket.shrink()[:, None] / bucket.D)
            for t, local, first in bucket.parts:
                x = xs[t]
                block = z[first : first + len(local)].to(x.dtype)
                x.index_copy_(1, local, block.view((len(local), x.shape[0], *x.shape[2:])).transpose(0, 1))
