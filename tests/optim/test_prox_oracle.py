"""The weighted proximal operators against an independent float64 bisection oracle, on adversarial groups.

The oracle (numpy, float64, written from the definitions in :mod:`optim.prox`'s docstring and
nothing else) decides each group by the closed tests — lasso: zero iff ‖Dx‖ ≤ τ; MCP: keep iff
‖x‖ > γλ_g, else zero iff ‖Dx‖ ≤ τ — and finds θ with F(θ) = 1 by bisection to full precision.
The operators must agree on every branch and meet the documented tolerance
|F(‖z‖) − 1| ≤ 1e-10 (float64) / 1e-6 (float32), F evaluated exactly from the inputs' values.
Every test runs twice: with the C kernel of :mod:`optim.kernel` (the CPU's implementation of
the weighted lasso) and with the torch code alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optim.prox as prox
from optim import ProxAdam, kernel
from optim.prox import group_size, prox_group_l1_l2_, prox_group_mcp_

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 1e-6}
KKT = {F64: 1e-10, F32: 1e-5}
AMBIGUOUS = 1e-13  # relative distance to a branch threshold within which either branch is right


@pytest.fixture(autouse=True, params=["kernel", "torch"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C kernel where it applies, or the torch code everywhere."""
    if request.param == "torch":
        monkeypatch.setattr(kernel, "library", lambda: None)
    elif kernel.library() is None:
        pytest.skip("no C compiler here: the kernel's own tests say whether that is expected")
    return request.param


# --------------------------------------------------------------------------- the oracle
def rows(t: torch.Tensor) -> np.ndarray:
    """One float64 row per group t[:, j, ...]."""
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1).double().numpy()


def F_of(theta: np.ndarray, q: np.ndarray, e: np.ndarray, tau: float) -> np.ndarray:
    """F(θ) = Σ (d x)² / (θ e + τ)² per row, θ one value per row."""
    return np.sum((q / (theta[:, None] * e + tau)) ** 2, axis=1)


def dF_of(theta: np.ndarray, q: np.ndarray, e: np.ndarray, tau: float) -> np.ndarray:
    return -2 * np.sum(q**2 * e / (theta[:, None] * e + tau) ** 3, axis=1)


def bisect(q: np.ndarray, e: np.ndarray, tau: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The root of F − 1 in [lo, hi] (F(lo) ≥ 1 ≥ F(hi)) by plain bisection, to the last bit."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(2200):  # enough to resolve down to denormals
        mid = 0.5 * (lo + hi)
        settled = (mid <= lo) | (mid >= hi)
        if settled.all():
            break
        left = F_of(mid, q, e, tau) > 1
        lo = np.where(left & ~settled, mid, lo)
        hi = np.where(~left & ~settled, mid, hi)
    return 0.5 * (lo + hi)


def norms(a: np.ndarray) -> np.ndarray:
    """‖row‖₂, scaled so that denormal rows do not underflow."""
    top = np.max(np.abs(a), axis=1)
    safe = np.where(top > 0, top, 1.0)
    return np.sqrt(np.sum((a / safe[:, None]) ** 2, axis=1)) * top


def oracle_lasso(x: np.ndarray, d: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """θ per row (0 for zero groups) and whether the group is zero."""
    q = d * x
    zero = norms(q) <= tau
    hi = norms(x)
    theta = bisect(q, d, tau, np.zeros_like(hi), hi)
    return np.where(zero, 0.0, theta), zero


def oracle_mcp(x: np.ndarray, d: np.ndarray, tau: float, mu: float, radius: float):
    """θ per row and the branch of each row: 0 keep, 1 zero, 2 root."""
    q = d * x
    keep = norms(x) > radius
    zero = ~keep & (norms(q) <= tau)
    hi = np.full(len(x), radius)
    theta = bisect(q, d - mu, tau, np.zeros_like(hi), hi)
    branch = np.where(keep, 0, np.where(zero, 1, 2))
    return np.where(branch == 2, theta, 0.0), branch


# --------------------------------------------------------------------------- checks
def check_lasso(x: torch.Tensor, d: torch.Tensor, z: torch.Tensor, tau: float) -> None:
    """Branches as the oracle, |F(‖z‖) − 1| within tolerance, θ as the oracle's, and the KKT conditions."""
    dtype = x.dtype
    X, D, Z = rows(x), rows(d), rows(z)
    theta_star, zero = oracle_lasso(X, D, tau)
    norm = norms(Z)
    q = D * X
    sure = np.abs(norms(q) / tau - 1) > AMBIGUOUS  # farther from the threshold than float64 sums can tell
    assert np.array_equal((norm == 0)[sure], zero[sure]), "zero groups differ from the oracle's"
    live = (norm > 0) & ~zero
    if not live.any():
        return
    F = F_of(norm[live], q[live], D[live], tau)
    assert np.max(np.abs(F - 1)) <= TOL[dtype]
    slope = np.minimum(np.abs(dF_of(theta_star[live], q[live], D[live], tau)), np.abs(dF_of(norm[live], q[live], D[live], tau)))
    assert np.all(np.abs(norm[live] - theta_star[live]) <= 2 * TOL[dtype] / slope + 1e-15 * theta_star[live])
    grad = D[live] * (Z[live] - X[live]) + tau * Z[live] / norm[live, None]
    scale = tau + norms(q[live])
    assert np.all(norms(grad) <= KKT[dtype] * scale)


def check_mcp(x, d, z, tau, mu, radius, lam_g, alpha, gamma) -> None:
    """Branch rules, exact keep and zero, |F − 1| and the stationarity equation of the root branch."""
    dtype = x.dtype
    X, D, Z = rows(x), rows(d), rows(z)
    theta_star, branch = oracle_mcp(X, D, tau, mu, radius)
    q = D * X
    sure = (np.abs(norms(q) / tau - 1) > AMBIGUOUS) & (np.abs(norms(X) / radius - 1) > AMBIGUOUS)
    X, D, Z, q, theta_star, branch = X[sure], D[sure], Z[sure], q[sure], theta_star[sure], branch[sure]
    norm = norms(Z)
    assert np.array_equal(Z[branch == 0], X[branch == 0]), "keep groups must be returned exactly"
    assert np.all(norm[branch == 1] == 0)
    root = branch == 2
    assert np.all(norm[root] > 0) and np.all(norm[root] <= radius * (1 + 1e-12))
    if not root.any():
        return
    F = F_of(norm[root], q[root], D[root] - mu, tau)
    assert np.max(np.abs(F - 1)) <= TOL[dtype]
    grad = D[root] * (Z[root] - X[root]) + alpha * (lam_g / norm[root, None] - 1 / gamma) * Z[root]
    scale = tau + norms(q[root])
    assert np.all(norms(grad) <= KKT[dtype] * scale)
    convex = np.all(gamma * D[root] > alpha, axis=1)
    if convex.any():  # unique root there: θ as the oracle's
        e = D[root][convex] - mu
        slope = np.abs(dF_of(theta_star[root][convex], q[root][convex], e, tau))
        assert np.all(np.abs(norm[root][convex] - theta_star[root][convex]) <= 4 * TOL[dtype] / slope
                      + 1e-14 * theta_star[root][convex])


# --------------------------------------------------------------------------- adversarial groups
def adversarial(shape: tuple[int, ...], dtype: torch.dtype, seed: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of six kinds, in turn: plain, one entry 1e6× the rest, ‖Dx‖ = τ(1 + 1e-7),
    ‖Dx‖ = τ(1 − 1e-7), half the entries denormal, all entries denormal (with d near the top of
    the range); d spans 12 decades (8 in float32, whose range is smaller), group norms spread
    over six decades around τ."""
    gen = torch.Generator().manual_seed(seed)
    grouped = (shape[1], shape[0], *shape[2:])  # built group-major, transposed at the end
    x = torch.randn(grouped, generator=gen, dtype=F64)
    decades = 12.0 if dtype == F64 else 8.0
    d = 10 ** (decades * torch.rand(grouped, generator=gen, dtype=F64) - decades / 2)
    info = torch.finfo(dtype)
    for j in range(shape[1]):
        g, dg = x[j].view(-1), d[j].view(-1)
        kind = j % 6
        if kind == 1:
            g[int(torch.randint(g.numel(), (1,), generator=gen))] *= 1e6
        if kind == 5:
            g.copy_(g.sign() * info.tiny * torch.rand(g.shape, generator=gen, dtype=F64).clamp(min=1e-3))
            dg.copy_(info.max * 10 ** (-2 * torch.rand(g.shape, generator=gen, dtype=F64) - 1))
            continue
        g *= 10 ** (6 * torch.rand((), generator=gen, dtype=F64) - 3) * tau / (dg * g).norm()
        if kind in (2, 3):
            g *= (1 + 1e-7 if kind == 2 else 1 - 1e-7) * tau / (dg * g).norm()
        if kind == 4:
            g[::2] = g[::2].sign() * info.tiny * torch.rand(g[::2].shape, generator=gen, dtype=F64).clamp(min=1e-3)
    return x.transpose(0, 1).contiguous().to(dtype), d.transpose(0, 1).contiguous().to(dtype)


SHAPES = [(1, 30), (2, 25), (7, 20, 1), (300, 10), (3, 15, 2, 2), (4, 12, 3, 3), (2, 10, 2, 3, 2), (33, 10, 3, 3)]


def lam_for(x: torch.Tensor, tau: float, alpha: float) -> float:
    return tau / (alpha * math.sqrt(group_size(x)))


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lasso_matches_the_oracle_on_adversarial_groups(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tau, alpha = 0.3, 0.5
    x, d = adversarial(shape, dtype, seed=sum(shape), tau=tau)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=alpha, lam=lam_for(x, tau, alpha), denoms=[d])
    check_lasso(x, d, z, tau)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES[::2], ids=lambda s: "x".join(map(str, s)))
def test_mcp_matches_the_oracle_on_adversarial_groups(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tau, alpha, gamma = 0.3, 0.5, 3.0
    x, d = adversarial(shape, dtype, seed=7 + sum(shape), tau=tau)
    lam = lam_for(x, tau, alpha)
    lam_g = lam * math.sqrt(group_size(x))
    z = x.clone()
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma, denoms=[d])
    check_mcp(x, d, z, tau, alpha / gamma, gamma * lam_g, lam_g, alpha, gamma)


def test_several_tensors_of_every_rank_at_once() -> None:
    """One call with 2-D to 5-D tensors, both dtypes, empty tensors in between."""
    tensors, denoms, alphas = [], [], []
    for k, shape in enumerate(SHAPES[:6]):
        for dtype in (F64, F32):
            x, d = adversarial(shape, dtype, seed=100 + k, tau=0.2 * (k + 1))
            tensors.append(x)
            denoms.append(d)
            alphas.append(0.5)
    tensors.insert(3, torch.ones(3, 0, 2, 2))
    denoms.insert(3, torch.ones(3, 0, 2, 2))
    alphas.insert(3, 0.5)
    out = [t.clone() for t in tensors]
    lam = 0.1
    prox_group_l1_l2_(out, alpha=alphas, lam=lam, denoms=denoms)
    for x, d, z, a in zip(tensors, denoms, out, alphas):
        if x.numel():
            check_lasso(x, d, z, a * lam * math.sqrt(group_size(x)))


# --------------------------------------------------------------------------- regressions
def test_regression_model_start_right_of_the_root_float64() -> None:
    """Near the zero threshold, d over 12 decades, one dominant entry: the moment model's root
    lands right of the true root. It used to be the bracket's lower end (Newton froze there and
    returned |F − 1| up to 0.39); it must only be a start."""
    gen = torch.Generator().manual_seed(0)
    n, tau = 38, 1.0
    x = torch.randn(64, n, generator=gen, dtype=F64)
    d = 10 ** (12 * torch.rand(64, n, generator=gen, dtype=F64) - 6)
    x[torch.arange(64), torch.randint(0, n, (64,), generator=gen)] *= 1e6
    side = 1 + 1e-3 * 10 ** (-6 * torch.rand(64, generator=gen, dtype=F64))
    x *= (tau * side / (d * x).norm(dim=1))[:, None]
    X, D = x.T.contiguous(), d.T.contiguous()  # groups along dim 1
    # the moment model's root, as the operator computes it
    A = (x * x).sum(1)
    r = 1 / (A.sqrt()[:, None] + tau / d)
    moments = [(x * x * r**2 * r**k).sum(1) for k in range(5)]
    _, start, _, settled = prox._moment_root(A, A.sqrt(), r.amax(1), moments, torch.full((64,), float(n), dtype=F64), F64)
    F_start = ((d * x / (start[:, None] * d + tau)) ** 2).sum(1)
    assert ((F_start < 1) & ~settled).sum() >= 10  # the model root is right of the root for many groups
    Z = X.clone()
    prox_group_l1_l2_([Z], alpha=1.0, lam=tau / math.sqrt(n), denoms=[D])
    check_lasso(X, D, Z, tau)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_regression_groups_the_prox_barely_shrinks_are_settled_by_the_moments(dtype: torch.dtype, implementation: str) -> None:
    """‖Dx‖ from 1e4 to 1e16 times τ (small λ: the study's 1e-6 regime), d over four decades.

    There 1 − ρr̄ (r = 1/(ρ + τ/d)) is about τ/(ρd) and cancels; the test that a group is not
    within rounding of the zero branch used a first-order margin, 32 eps/(1 − ρr̄), which turns
    negative once 1 − ρr̄ < 32 eps: every such group was sent to the float64 rows (97 % of a
    training run's groups, most of its optimizer time). They are as far from zero as groups get:
    the moments must settle them, and the results meet the oracle."""
    gen = torch.Generator().manual_seed(3)
    tau, size = 1e-3, 40
    x = torch.randn(size, 64, generator=gen, dtype=F64)
    d = 10 ** (4 * torch.rand(size, 64, generator=gen, dtype=F64) - 2)
    x *= tau * 10 ** torch.linspace(4, 16, 64, dtype=F64) / (d * x).norm(dim=0)
    x, d = x.to(dtype), d.to(dtype)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=tau / math.sqrt(size), denoms=[d])
    check_lasso(x, d, z, tau)
    if implementation == "kernel":
        assert kernel.usable([x.clone()], [d])
        _, _, settled = kernel.weighted_lasso([x.clone()], [d], [tau], prox._tol(dtype))
    else:
        A = prox.group_sum(x * x)
        r = 1 / (A.sqrt() + tau / d)
        moments = [prox.group_sum(x * x * r ** (2 + k)) for k in range(5)]
        *_, settled = prox._moment_root(A.double(), A.sqrt().double(), r.amax(0).double(), [m.double() for m in moments],
                                        torch.full((64,), float(size), dtype=F64), dtype)
    assert settled.all(), f"{int((~settled).sum())} of 64 groups left to the float64 rows"


@pytest.mark.parametrize(("dtype", "small", "d_small"), [(F32, 1e-10, 1e-8), (F64, 1e-20, 1e-13)], ids=["f32", "f64"])
def test_regression_a_live_group_whose_gap_is_rounding_is_not_zeroed(dtype: torch.dtype, small: float, d_small: float) -> None:
    """One entry x ≈ 1 with a tiny d, one tiny entry with a huge d carrying ‖Dx‖ = 1.1τ (found by an
    adversarial search). ρ d_max/τ is beyond 1/eps, so 1 − ρ r_max came out as a few eps of rounding
    instead of ~1e-10 and the zero test, with a first-order margin, zeroed the group (F(0) = 1.21)."""
    tau = 1.0
    for k in range(1, 40):  # the big entries' roundings: some make the computed 1 − ρ r_max positive
        x = torch.tensor([[1 + k / 997], [small]], dtype=dtype)
        d = torch.tensor([[d_small], [1.1 * tau / small]], dtype=dtype)
        z = x.clone()
        prox_group_l1_l2_([z], alpha=1.0, lam=tau, denoms=[d], reweight=False)
        check_lasso(x, d, z, tau)


def write_spread(x: torch.Tensor, d: torch.Tensor, z: torch.Tensor) -> float:
    """The map writes z_i = x_i / (1 + s/d_i) with one s per group: the largest relative spread
    over a group of s_i = d_i (x_i/z_i − 1). A few ulps, whatever θ is, unless the write cancels."""
    X, D, Z = rows(x), rows(d), rows(z)
    s = D * (X / Z - 1)
    mid = np.median(s, axis=1)
    return float(np.max((s.max(1) - s.min(1)) / mid))


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_regression_hard_shrink_write_has_no_cancellation(dtype: torch.dtype) -> None:
    """‖Dx‖ = τ(1 + 1e-3): z is about 1e-3 of x. x − x/(1 + ωd) lost three digits of every z_i there."""
    gen = torch.Generator().manual_seed(1)
    tau, n = 0.5, 50
    x = torch.randn(n, 8, generator=gen, dtype=F64)
    d = 10 ** (2 * torch.rand(n, 8, generator=gen, dtype=F64) - 1)
    x *= tau * (1 + 1e-3) / (d * x).norm(dim=0)
    x, d = x.to(dtype), d.to(dtype)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=tau / math.sqrt(n), denoms=[d])
    assert np.max(norms(rows(z)) / norms(rows(x))) < 2e-3  # hard shrink indeed
    assert write_spread(x, d, z) <= 16 * torch.finfo(dtype).eps
    check_lasso(x, d, z, tau)


def test_regression_mcp_hard_shrink_write_has_no_cancellation() -> None:
    gen = torch.Generator().manual_seed(2)
    tau, n, alpha, gamma = 0.5, 20, 0.5, 3.0
    x = torch.randn(n, 6, generator=gen, dtype=F64)
    d = 1 + torch.rand(n, 6, generator=gen, dtype=F64)
    x *= tau * (1 + 1e-6) / (d * x).norm(dim=0)
    z = x.clone()
    lam = tau / (alpha * math.sqrt(n))
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma, denoms=[d])
    lam_g = lam * math.sqrt(n)
    check_mcp(x, d, z, tau, alpha / gamma, gamma * lam_g, lam_g, alpha, gamma)
    assert (rows(z) != 0).all() and np.max(norms(rows(z)) / norms(rows(x))) < 1e-5
    assert write_spread(x, d, z) <= 16 * torch.finfo(F64).eps


@pytest.mark.parametrize("shape", [(4, 0, 3, 3), (0, 5, 3, 3), (0, 0), (3, 0)])
def test_empty_tensors_pass_through_the_operators(shape: tuple[int, ...]) -> None:
    assert group_size(torch.empty(shape)) == 0
    for weighted in (True, False):
        t = torch.empty(shape)
        denoms = [torch.ones(shape)] if weighted else None
        prox_group_l1_l2_([t], alpha=0.1, lam=1.0, denoms=denoms)
        prox_group_mcp_([t], alpha=0.1, lam=1.0, gamma=3.0, denoms=denoms)
        assert t.shape == shape


IMPLS = [dict(fused=True), dict(fused=False, foreach=True), dict(fused=False, foreach=False)]


@pytest.mark.parametrize("impl", IMPLS, ids=["fused", "foreach", "loop"])
@pytest.mark.parametrize("penalty", ["l1_l2", "group_mcp"])
@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "plain"])
def test_regression_empty_tensors_through_prox_adam(impl: dict, penalty: str, weighted: bool) -> None:
    torch.manual_seed(0)
    empties = [torch.zeros(4, 0, 3, 3, requires_grad=True), torch.zeros(0, 3, 3, 3, requires_grad=True)]
    full = torch.randn(5, 3, 3, 3, requires_grad=True)
    twin = full.detach().clone().requires_grad_(True)
    opt = ProxAdam([dict(params=[*empties, full], penalty=penalty, lambda_=0.05, weighted=weighted)], lr=0.1, **impl)
    ref = ProxAdam([dict(params=[twin], penalty=penalty, lambda_=0.05, weighted=weighted)], lr=0.1, **impl)
    for _ in range(3):
        grad = torch.randn(5, 3, 3, 3)
        for p in empties:
            p.grad = torch.zeros_like(p)
        full.grad, twin.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(full, twin)  # the empty tensors change nothing for the others
    assert [tuple(p.shape) for p in empties] == [(4, 0, 3, 3), (0, 3, 3, 3)]


# --------------------------------------------------------------------------- brute force (MCP, convex)
def brute_force_mcp(x: np.ndarray, d: np.ndarray, alpha: float, lam_g: float, gamma: float) -> float:
    """min over θ of min_{‖z‖=θ} ½Σ d(z − x)² + α MCP(θ): the inner problem on the sphere is solved
    by z_i = d_i x_i/(d_i + ν), ν ≥ 0 by bisection; θ on a fine grid then refined. Returns the value."""

    def inner(theta: np.ndarray) -> np.ndarray:
        lo, hi = np.zeros_like(theta), np.full_like(theta, 1e12)
        for _ in range(200):
            nu = 0.5 * (lo + hi)
            big = np.sqrt(np.sum((d * x / (d + nu[:, None])) ** 2, axis=1)) > theta
            lo, hi = np.where(big, nu, lo), np.where(big, hi, nu)
        z = d * x / (d + (0.5 * (lo + hi))[:, None])
        t = theta
        pen = np.where(t <= gamma * lam_g, lam_g * t - t * t / (2 * gamma), gamma * lam_g**2 / 2)
        return 0.5 * np.sum(d * (z - x) ** 2, axis=1) + alpha * pen

    top = np.sqrt(np.sum(x * x))
    grid = np.linspace(0, top, 2001)
    values = inner(grid)
    k = int(np.argmin(values))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    for _ in range(60):  # golden-section refinement (the reduced problem is convex here)
        m1, m2 = a + 0.382 * (b - a), a + 0.618 * (b - a)
        v1, v2 = inner(np.array([m1, m2]))
        a, b = (a, m2) if v1 < v2 else (m1, b)
    return float(min(values.min(), inner(np.array([0.5 * (a + b)]))[0]))


def test_mcp_matches_brute_force_minimisation_on_small_convex_groups() -> None:
    gen = torch.Generator().manual_seed(3)
    alpha, gamma, lam = 0.5, 2.0, 0.3
    x = torch.randn(3, 12, generator=gen, dtype=F64) * torch.logspace(-1.5, 0.5, 12, dtype=F64)
    d = 0.3 + 10 ** (2 * torch.rand(3, 12, generator=gen, dtype=F64) - 1)  # γ d > α everywhere
    z = x.clone()
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma, denoms=[d])
    lam_g = lam * math.sqrt(3)
    X, D, Z = rows(x), rows(d), rows(z)
    for j in range(12):
        t = np.sqrt(np.sum(Z[j] ** 2))
        pen = lam_g * t - t * t / (2 * gamma) if t <= gamma * lam_g else gamma * lam_g**2 / 2
        ours = 0.5 * np.sum(D[j] * (Z[j] - X[j]) ** 2) + alpha * pen
        assert ours <= brute_force_mcp(X[j], D[j], alpha, lam_g, gamma) + 1e-9


# --------------------------------------------------------------------------- properties
@settings(max_examples=50, deadline=None, database=None)  # no .hypothesis folder in the tree
@given(
    size=st.integers(1, 300),
    groups=st.integers(1, 6),
    decades=st.floats(0.0, 12.0),
    level=st.floats(-3.0, 3.0),
    spike=st.booleans(),
    seed=st.integers(0, 2**16),
    f32=st.booleans(),
)
def test_property_lasso_agrees_with_the_oracle(size, groups, decades, level, spike, seed, f32) -> None:
    dtype = F32 if f32 else F64
    if f32:
        decades = min(decades, 8.0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, groups, generator=gen, dtype=F64)
    if spike:
        x[0] *= 1e6
    d = 10 ** (decades * torch.rand(size, groups, generator=gen, dtype=F64) - decades / 2)
    tau = 0.7
    x *= tau * 10**level / (d * x).norm(dim=0).clamp(min=1e-300)
    x, d = x.to(dtype), d.to(dtype)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=tau / math.sqrt(size), denoms=[d])
    check_lasso(x, d, z, tau)


@settings(max_examples=50, deadline=None, database=None)  # no .hypothesis folder in the tree
@given(
    size=st.integers(1, 100),
    decades=st.floats(0.0, 6.0),
    level=st.floats(-2.0, 2.0),
    gamma=st.floats(0.6, 8.0),
    seed=st.integers(0, 2**16),
    f32=st.booleans(),
)
def test_property_mcp_branches_and_stationarity(size, decades, level, gamma, seed, f32) -> None:
    dtype = F32 if f32 else F64
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 5, generator=gen, dtype=F64)
    d = 10 ** (decades * torch.rand(size, 5, generator=gen, dtype=F64) - decades / 2)
    alpha, tau = 0.5, 0.4
    x *= tau * 10 ** (level + torch.linspace(-1, 1, 5, dtype=F64)) / (d * x).norm(dim=0)
    x, d = x.to(dtype), d.to(dtype)
    lam = tau / (alpha * math.sqrt(size))
    lam_g = lam * math.sqrt(size)
    z = x.clone()
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma, denoms=[d])
    check_mcp(x, d, z, tau, alpha / gamma, gamma * lam_g, lam_g, alpha, gamma)
