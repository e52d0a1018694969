"""Proximal operators: closed forms, optimality conditions, brute force, MCP branches, float32."""

import math
import warnings

import pytest
import torch

import optim.prox as prox
from optim.prox import prox_group_l1_l2_, prox_group_mcp_

F64 = torch.float64


def rows(t: torch.Tensor) -> torch.Tensor:
    """One row per group t[:, j, ...]."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def case(seed: int, shape=(6, 40, 3, 3), dtype=F64, decades: float = 4.0):
    """Groups with norms over two decades and a metric d spanning ``decades`` inside each group."""
    gen = torch.Generator().manual_seed(seed)
    scale = 10 ** (2 * torch.rand((1, shape[1]) + (1,) * (len(shape) - 2), generator=gen, dtype=dtype) - 1)
    x = torch.randn(shape, generator=gen, dtype=dtype) * scale
    d = 10 ** (decades * torch.rand(shape, generator=gen, dtype=dtype) - decades / 2)
    return x, d


def residual(x: torch.Tensor, d: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """F(θ) − 1 at θ = ‖z‖ for every nonzero group (float64)."""
    x, d, z = rows(x).double(), rows(d).double(), rows(z).double()
    theta = z.norm(dim=1, keepdim=True)
    F = ((d * x) ** 2 / (theta * d + tau) ** 2).sum(1) - 1
    return F[theta.squeeze(1) > 0]


def test_plain_l1_l2_is_block_soft_thresholding() -> None:
    gen = torch.Generator().manual_seed(0)
    conv, linear = torch.randn(5, 7, 3, 3, generator=gen), torch.randn(4, 9, generator=gen)
    conv[:, 2] *= 1e-3  # a group below the threshold
    tensors = [conv.clone(), linear.clone()]
    prox_group_l1_l2_(tensors, alpha=[0.5, 0.2], lam=0.3)
    for before, after, alpha in zip((conv, linear), tensors, (0.5, 0.2)):
        tau = alpha * 0.3 * math.sqrt(rows(before).shape[1])
        norms = rows(before).norm(dim=1, keepdim=True)
        expected = rows(before) * (1 - tau / norms).clamp(min=0)
        torch.testing.assert_close(rows(after), expected)
    assert rows(tensors[0])[2].abs().sum() == 0


def test_reweight_off_uses_lambda_as_is() -> None:
    x = torch.randn(8, 3, 2, 2, dtype=F64)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=0.5, reweight=False)
    norms = rows(x).norm(dim=1, keepdim=True)
    torch.testing.assert_close(rows(z), rows(x) * (1 - 0.5 / norms).clamp(min=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_l1_l2_satisfies_optimality_conditions(seed: int) -> None:
    x, d = case(seed)
    alpha, size = 0.5, 6 * 9
    lam = torch.quantile(rows(d * x).norm(dim=1), 0.2 + 0.3 * seed).item() / (alpha * math.sqrt(size))
    tau = alpha * lam * math.sqrt(size)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=alpha, lam=lam, denoms=[d])
    X, D, Z = rows(x), rows(d), rows(z)
    norms = Z.norm(dim=1)
    zero = norms == 0
    assert 0 < zero.sum() < len(zero)  # both branches occur
    assert ((D * X)[zero].norm(dim=1) <= tau * (1 + 1e-12)).all()
    grad = D[~zero] * (Z[~zero] - X[~zero]) + tau * Z[~zero] / norms[~zero, None]
    assert (grad.norm(dim=1) <= 1e-6 * tau).all()
    assert residual(x, d, z, tau).abs().max() <= 1e-6


def test_weighted_l1_l2_matches_lbfgs() -> None:
    x, d = case(3, shape=(4, 6, 1, 3))
    alpha, lam = 0.3, 0.05
    tau = alpha * lam * math.sqrt(12)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=alpha, lam=lam, denoms=[d])

    def objective(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (d * (v - x) ** 2).sum() + tau * rows(v).norm(dim=1).sum()

    v = x.clone().requires_grad_(True)
    solver = torch.optim.LBFGS([v], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                               line_search_fn="strong_wolfe")
    solver.step(lambda: (solver.zero_grad(), objective(v).backward(), objective(v))[-1])
    assert objective(z) <= objective(v.detach()) + 1e-10
    torch.testing.assert_close(z, v.detach(), atol=1e-5, rtol=1e-4)


def test_constant_metric_equals_plain_operator() -> None:
    x = torch.randn(5, 6, 3, 3, dtype=F64)
    weighted, plain = x.clone(), x.clone()
    prox_group_l1_l2_([weighted], alpha=0.1, lam=0.2, denoms=[torch.full_like(x, 4.0)])
    prox_group_l1_l2_([plain], alpha=0.1 / 4.0, lam=0.2)
    torch.testing.assert_close(weighted, plain)


def test_easy_groups_are_settled_without_newton_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small shrink (τ/d ≪ ‖x‖, as in training) needs no evaluation of F over the tensors."""
    x, d = case(4, decades=2.0)
    z = x.clone()
    monkeypatch.setattr(prox, "_evaluate", lambda *args: pytest.fail("the fast path left groups open"))
    prox_group_l1_l2_([z], alpha=1e-3, lam=1e-3, denoms=[d])
    shrink = 1 - rows(z).norm(dim=1) / rows(x).norm(dim=1)
    assert shrink.min() > 0 and shrink.max() < 0.1
    assert residual(x, d, z, 1e-3 * 1e-3 * math.sqrt(54)).abs().max() <= 1e-9


def test_several_tensors_and_steps_solve_like_one_at_a_time() -> None:
    (x1, d1), (x2, d2) = case(5, shape=(3, 10, 3, 3)), case(6, shape=(7, 12))
    together = [x1.clone(), x2.clone()]
    prox_group_l1_l2_(together, alpha=[0.2, 0.4], lam=0.05, denoms=[d1, d2])
    for x, d, alpha, z in zip((x1, x2), (d1, d2), (0.2, 0.4), together):
        alone = x.clone()
        prox_group_l1_l2_([alone], alpha=alpha, lam=0.05, denoms=[d])
        torch.testing.assert_close(z, alone)


def test_float32_reaches_the_residual_target() -> None:
    x, d = case(7, shape=(64, 48, 3, 3), dtype=torch.float32)
    alpha, lam = 0.5, 0.01
    z = x.clone()
    prox_group_l1_l2_([z], alpha=alpha, lam=lam, denoms=[d])
    assert residual(x, d, z, alpha * lam * math.sqrt(64 * 9)).abs().max() <= 1e-6  # the documented tolerance


def mcp_objective(v, x, d, tau, alpha, lam_g, gamma):
    t = rows(v).norm(dim=1)
    penalty = torch.where(t <= gamma * lam_g, lam_g * t - t * t / (2 * gamma), gamma * lam_g**2 / 2)
    return 0.5 * (d * (v - x) ** 2).sum() + alpha * penalty.sum()


def test_weighted_mcp_branches_and_brute_force() -> None:
    """γ d_i > α everywhere (the convex case): keep, zero and root branches against L-BFGS."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 9, 1, 3, generator=gen, dtype=F64) * torch.logspace(-3, 0, 9, dtype=F64).view(1, 9, 1, 1)
    d = 1 + 10 ** (2 * torch.rand(x.shape, generator=gen, dtype=F64) - 1)
    alpha, lam, gamma = 0.5, 0.1, 2.0
    lam_g = lam * math.sqrt(12)
    z = x.clone()
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma, denoms=[d])
    X, Z = rows(x), rows(z)
    keep = X.norm(dim=1) > gamma * lam_g
    zero = Z.norm(dim=1) == 0
    root = ~keep & ~zero
    assert keep.any() and zero.any() and root.any()
    assert torch.equal(Z[keep], X[keep])
    v = x.clone().requires_grad_(True)
    solver = torch.optim.LBFGS([v], lr=1, max_iter=1000, tolerance_grad=1e-14, tolerance_change=1e-16,
                               line_search_fn="strong_wolfe")
    objective = lambda w: mcp_objective(w, x, d, alpha * lam_g, alpha, lam_g, gamma)  # noqa: E731
    solver.step(lambda: (solver.zero_grad(), objective(v).backward(), objective(v))[-1])
    assert objective(z) <= objective(v.detach()) + 1e-10
    t = Z[root].norm(dim=1, keepdim=True)  # stationarity in the root branch
    grad = rows(d)[root] * (Z[root] - X[root]) + alpha * (lam_g / t - 1 / gamma) * Z[root]
    assert (grad.norm(dim=1) <= 1e-6 * alpha * lam_g).all()


def test_plain_mcp_is_firm_thresholding() -> None:
    x = torch.randn(3, 30, dtype=F64) * torch.linspace(0.0, 1.5, 30, dtype=F64)
    alpha, lam, gamma = 0.4, 0.2, 3.0
    lam_g = lam * math.sqrt(3)
    z = x.clone()
    prox_group_mcp_([z], alpha=alpha, lam=lam, gamma=gamma)
    norms = rows(x).norm(dim=1, keepdim=True)
    firm = rows(x) * ((1 - alpha * lam_g / norms) / (1 - alpha / gamma)).clamp(min=0)
    expected = torch.where(norms > gamma * lam_g, rows(x), firm)
    torch.testing.assert_close(rows(z), expected)


def test_zero_lambda_is_the_identity() -> None:
    x, d = case(9)
    z = x.clone()
    prox_group_l1_l2_([z], alpha=0.5, lam=0.0, denoms=[d])
    prox_group_mcp_([z], alpha=0.5, lam=0.0, gamma=3.0, denoms=[d])
    assert torch.equal(z, x)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="Invalid gamma value: 0"):
        prox_group_mcp_([torch.ones(2, 2)], alpha=1.0, lam=1.0, gamma=0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        prox_group_l1_l2_([torch.ones(3)], alpha=1.0, lam=1.0)
    with pytest.raises(ValueError, match="denoms"):
        prox_group_l1_l2_([torch.ones(2, 2)], alpha=1.0, lam=1.0, denoms=[torch.ones(2, 3)])
    with pytest.raises(ValueError, match="Invalid lam value: -1"):
        prox_group_l1_l2_([torch.ones(2, 2)], alpha=1.0, lam=-1)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_group_stays_non_finite_and_leaves_the_others_alone(bad: float) -> None:
    """A diverged step (the training loop names it) must not stall the solver or change the finite groups."""
    x, d = case(7, shape=(4, 12, 3, 3))
    broken = x.clone()
    broken[1, 3, 0, 0] = bad
    reference = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not reach" warning from a group without a root
        prox_group_l1_l2_([broken], alpha=0.1, lam=0.05, denoms=[d])
    prox_group_l1_l2_([reference], alpha=0.1, lam=0.05, denoms=[d])
    assert not rows(broken)[3].isfinite().all()
    others = [j for j in range(12) if j != 3]
    torch.testing.assert_close(rows(broken)[others], rows(reference)[others], rtol=0, atol=0)
