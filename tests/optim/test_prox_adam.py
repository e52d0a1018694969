"""ProxAdam: torch's Adam/AdamW when λ = 0, sparsity when λ > 0, state round trip, validation."""

import copy

import pytest
import torch
from torch import nn

from optim import ProxAdam
from optim.sparsity import penalty, summary

IMPLS = [dict(fused=False, foreach=True), dict(fused=False, foreach=False), dict(fused=True)]


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.Flatten(), nn.LazyLinear(2))


def split(model: nn.Module, **prox: object) -> list[dict]:
    conv = [p for p in model.parameters() if p.ndim == 4]
    return [dict(params=conv, **prox), dict(params=[p for p in model.parameters() if p.ndim != 4])]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def materialised(seed: int = 0) -> nn.Sequential:
    model = net(seed)
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    return model


@pytest.mark.parametrize("impl", IMPLS, ids=["foreach", "single", "fused"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_zero_lambda_reproduces_torch(impl: dict, decoupled: bool) -> None:
    ref, ours = materialised(), materialised()
    torch_opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(ref.parameters(), lr=1e-2, weight_decay=0.1)
    opt = ProxAdam(split(ours, penalty="l1_l2", lambda_=0.0), lr=1e-2, weight_decay=0.1,
                   decoupled_weight_decay=decoupled, **impl)
    train(ref, torch_opt, 20)
    train(ours, opt, 20)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert (a - b).abs().max() <= 1e-6


def test_prox_off_reproduces_torch_and_groups_mix_adam_with_adamw() -> None:
    ref, ours = materialised(), materialised()
    conv = [p for p in ref.parameters() if p.ndim == 4]
    rest = [p for p in ref.parameters() if p.ndim != 4]
    torch_opts = [torch.optim.AdamW(conv, lr=1e-2, weight_decay=0.1), torch.optim.Adam(rest, lr=1e-2, weight_decay=0.1)]
    groups = split(ours, penalty="l1_l2", lambda_=1.0, prox=False, decoupled_weight_decay=True)
    opt = ProxAdam(groups, lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        for model, step in ((ref, lambda: [o.step() for o in torch_opts]), (ours, opt.step)):
            model.zero_grad()
            model(x).square().mean().backward()
            step()
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert (a - b).abs().max() <= 1e-6


def student(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(6, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))


def distil(lam: float, steps: int = 60) -> tuple[nn.Module, float]:
    """Fit a teacher that ignores input channels 3..5 and hidden channels 4..7; returns the start penalty."""
    teacher, model = student(123), student()
    with torch.no_grad():
        teacher[0].weight[:, 3:] = 0
        teacher[2].weight[:, 4:] = 0
        x = torch.randn(32, 6, 2, 2, generator=torch.Generator().manual_seed(0))
        target = teacher(x)
    before = penalty(model, lam=1.0).item()
    opt = ProxAdam(split(model, penalty="l1_l2", lambda_=lam), lr=3e-2)
    for _ in range(steps):
        opt.zero_grad()
        (model(x) - target).square().mean().backward()
        opt.step()
    return model, before


def test_penalty_zeroes_groups_and_more_with_larger_lambda() -> None:
    weak, before = distil(1e-3)
    strong, _ = distil(3e-3)
    assert penalty(weak, lam=1.0).item() < before
    weak_zero, strong_zero = summary(weak)["zero_groups"], summary(strong)["zero_groups"]
    assert 0 < weak_zero < strong_zero < summary(strong)["total_groups"]


def test_fused_and_foreach_steps_agree_with_the_prox_on() -> None:
    """The fused path rescales d and α by √(1 − β₂ᵗ); the proximal step must not change."""
    model = materialised()
    opt = ProxAdam(split(model, penalty="l1_l2", lambda_=3e-3), lr=1e-2, fused=False)
    train(model, opt, 3)
    other = copy.deepcopy(model)
    fused = ProxAdam(split(other, penalty="l1_l2", lambda_=3e-3), lr=1e-2, fused=True)
    fused.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in fused.param_groups:
        group["fused"] = True  # the loaded groups carry fused=False
    train(model, opt, 1, seed=5)
    train(other, fused, 1, seed=5)
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _reference_unweighted(x0: torch.Tensor, grads: list[torch.Tensor], *, lr: float, lam: float, gamma: float | None,
                          wd: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """REFERENCE §5 written out in float64: AdamW, then the prox with d ≡ 1 and α = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)
    on the groups x[:, j] (group lasso: soft thresholding; group MCP: firm thresholding)."""
    (b1, b2), x = betas, x0.clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    lam_g = lam * (x[:, 0].numel()) ** 0.5
    for t, g in enumerate(grads, start=1):
        x = x * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        alpha = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        x = x - alpha * m / (v.sqrt() + eps * (1 - b2**t) ** 0.5)
        norm = x.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, *[1] * (x.ndim - 2))
        if gamma is None:
            scale = (1 - alpha * lam_g / norm).clamp(min=0)
        else:
            scale = torch.where(norm > gamma * lam_g, torch.ones_like(norm),
                                ((norm - alpha * lam_g) / ((1 - alpha / gamma) * norm)).clamp(min=0))
        x = x * scale
    return x


@pytest.mark.parametrize("impl", IMPLS, ids=["foreach", "single", "fused"])
@pytest.mark.parametrize("gamma", [None, 0.15], ids=["l1_l2", "group_mcp"])  # MCP: the largest groups pass γλ_g
def test_the_unweighted_prox_takes_the_references_step_on_every_path(impl: dict, gamma: float | None) -> None:
    """With d ≡ 1 the step size is not scale-free: every Adam path must hand the prox §5's α (the
    foreach and per-tensor paths once passed lr/(1 − β₁ᵗ), √(1 − β₂ᵗ)⁻¹ times too large: 31× at step 1)."""
    gen = torch.Generator().manual_seed(3)
    scales = torch.logspace(-2, 0, 16, dtype=torch.float64).view(1, -1, 1, 1)  # groups from near zero to large
    x0 = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64) * scales
    grads = [torch.randn(x0.shape, generator=gen, dtype=torch.float64) * 0.1 for _ in range(6)]
    lam = 3.0
    param = x0.clone().requires_grad_()
    penalty_name = "l1_l2" if gamma is None else "group_mcp"
    opt = ProxAdam([dict(params=[param], penalty=penalty_name, lambda_=lam, gamma=gamma or 3.0, weighted=False,
                         reweight=True)], lr=0.05, weight_decay=0.01, decoupled_weight_decay=True, **impl)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = _reference_unweighted(x0, grads, lr=0.05, lam=lam, gamma=gamma, wd=0.01)
    zero = expected.transpose(0, 1).flatten(1).eq(0).all(1)
    assert 0 < int(zero.sum()) < 16, "some groups are zeroed, some are not: both branches are exercised"
    torch.testing.assert_close(param.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("penalty_name", ["l1_l2", "group_mcp"])
def test_state_dict_round_trip_continues_identically(penalty_name: str) -> None:
    model = materialised()
    opt = ProxAdam(split(model, penalty=penalty_name, lambda_=3e-3, gamma=2.0), lr=1e-2)
    train(model, opt, 5)
    clone = copy.deepcopy(model)
    restored = ProxAdam(split(clone, penalty=penalty_name, lambda_=3e-3, gamma=2.0), lr=1e-2)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    state = restored.state_dict()["state"][0]
    assert state["step"].item() == 5 and state["step"].device.type == "cpu"
    train(model, opt, 5, seed=2)
    train(clone, restored, 5, seed=2)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(betas=(1.2, 0.999)), "Invalid beta parameter at index 0: 1.2"),
        (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
        (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        (dict(penalty="l2"), "Invalid penalty: 'l2'"),
        (dict(lambda_=-1.0), "Invalid lambda_ value: -1.0"),
        (dict(gamma=0.0), "Invalid gamma value: 0.0"),
    ],
)
def test_invalid_hyper_parameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ProxAdam([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_invalid_group_keys_are_checked_too() -> None:
    with pytest.raises(ValueError, match="Invalid penalised parameter of shape"):
        ProxAdam([dict(params=[torch.zeros(3, requires_grad=True)], penalty="l1_l2")])
    with pytest.raises(ValueError, match="Invalid learning rate: -2"):
        ProxAdam([dict(params=[torch.zeros(3, requires_grad=True)], lr=-2)])
    mixed = [torch.zeros(2, 2, requires_grad=True), torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)]
    with pytest.raises(ValueError, match="Invalid fused=True"):
        ProxAdam(mixed, fused=True)


def test_closure_is_evaluated_with_gradients() -> None:
    w = torch.ones(2, 2, requires_grad=True)
    opt = ProxAdam([w], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert (w < 1).all()
