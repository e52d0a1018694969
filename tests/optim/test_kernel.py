"""The C kernel of the weighted lasso (:mod:`optim.kernel`): its build, and its agreement with the torch code.

The oracle tests (``test_prox_oracle.py``) hold both implementations to the documented
guarantees; these check what is the kernel's own: the build and its fallback, memory
layouts, the step fused with Adam (against Adam followed by the torch prox), expansion
points of any value, and results independent of the thread count.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from optim import ProxAdam, kernel
from optim.prox import group_size, prox_group_l1_l2_

F32, F64 = torch.float32, torch.float64
RTOL = {F32: 2e-5, F64: 1e-9}  # θ to |F − 1| ≤ 1e-6 / 1e-10 in either implementation


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An empty build cache and no loaded library; the process's library is reloaded afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    library = kernel.library  # a test may replace it with monkeypatch, undone after this teardown
    library.cache_clear()
    yield tmp_path / "cache" / "gsmtl"
    library.cache_clear()


def torch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "library", lambda: None)


def test_the_kernel_builds_where_there_is_a_compiler() -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on this machine: the torch code runs (slower), as documented")
    assert kernel.library() is not None


def test_the_build_is_cached_and_reused(fresh_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    assert kernel.library() is not None
    (built,) = fresh_library.glob("prox-*.so")
    assert not list(fresh_library.glob(".prox-*"))  # no temporary file left behind
    kernel.library.cache_clear()

    def no_compiler(*args: object) -> None:
        raise AssertionError("the cached build should have been loaded")

    monkeypatch.setattr(kernel, "_compile", no_compiler)
    assert kernel.library() is not None
    assert list(fresh_library.glob("prox-*.so")) == [built]


def test_a_failing_compiler_falls_back_to_the_torch_code_with_one_warning(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "cc"
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "fakecc 1.0"; exit 0; fi\n'
                    'echo "error: no such compiler" >&2; exit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    x = torch.randn(6, 4, 3, 3)
    d = torch.rand(6, 4, 3, 3) + 0.5
    with caplog.at_level(logging.WARNING, logger="gsmtl"):
        z = x.clone()
        prox_group_l1_l2_([z], alpha=0.5, lam=0.2, denoms=[d])
        prox_group_l1_l2_([z.clone()], alpha=0.5, lam=0.2, denoms=[d])
    assert kernel.library() is None
    warnings = [r.getMessage() for r in caplog.records if "prox kernel" in r.getMessage()]
    assert len(warnings) == 1 and "error: no such compiler" in warnings[0]
    assert not list(fresh_library.glob("*"))  # nothing half-built left in the cache
    monkeypatch.setattr(kernel, "library", lambda: None)
    ref = x.clone()
    prox_group_l1_l2_([ref], alpha=0.5, lam=0.2, denoms=[d])
    assert torch.equal(z, ref)


def test_the_switch_turns_the_kernel_off(fresh_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSMTL_PROX_KERNEL", "0")
    assert kernel.library() is None
    assert not fresh_library.exists()  # not even built


def layout_case(shape: tuple[int, ...], dtype: torch.dtype, memory_format: torch.memory_format | None, seed: int):
    """x with log-normal group norms, d over four decades, τ zeroing about a third of the groups."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.randn((1, shape[1]) + (1,) * (len(shape) - 2), generator=gen).exp()
    x = (torch.randn(shape, generator=gen) * scale).to(dtype)
    d = (2 * torch.randn(shape, generator=gen)).exp().to(dtype)
    if memory_format is not None:
        x, d = x.contiguous(memory_format=memory_format), d.contiguous(memory_format=memory_format)
    dx = (x * d).double().transpose(0, 1).reshape(shape[1], -1).norm(dim=1)
    tau = dx.quantile(0.3).item()
    return x, d, tau


CASES = [
    ((64, 48, 3, 3), None),
    ((64, 48, 3, 3), torch.channels_last),
    ((40, 70), None),
    ((300, 5, 1, 1), None),
    ((8, 6, 2, 2, 2), None),
    ((8, 6, 2, 2, 2), torch.channels_last_3d),
    ((3, 20, 7, 7), None),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("shape", "memory_format"), CASES, ids=lambda c: str(c))
def test_the_kernel_matches_the_torch_code(shape, memory_format, dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel.library() is None:
        pytest.skip("no C compiler here")
    x, d, tau = layout_case(shape, dtype, memory_format, seed=len(shape) + shape[1])
    lam = tau / math.sqrt(group_size(x))
    assert kernel.usable([x], [d])
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=lam, denoms=[d])
    torch_code(monkeypatch)
    ref = x.clone()
    prox_group_l1_l2_([ref], alpha=1.0, lam=lam, denoms=[d])
    assert z.stride() == x.stride()
    zeros = z.transpose(0, 1).reshape(shape[1], -1).eq(0).all(1)
    assert torch.equal(zeros, ref.transpose(0, 1).reshape(shape[1], -1).eq(0).all(1))
    assert 0 < int(zeros.sum()) < shape[1]
    torch.testing.assert_close(z, ref, rtol=RTOL[dtype], atol=0)


def test_regression_a_group_at_the_zero_threshold_is_decided_exactly() -> None:
    """‖Dx‖ = τ up to float32 rounding: the refined moments about θ ≈ 0 once certified a tiny θ."""
    z = torch.tensor([[0.7]])
    prox_group_l1_l2_([z], alpha=1.0, lam=0.7, denoms=[torch.ones(1, 1)], reweight=False)
    assert z.item() == 0.0  # float32 0.7 < 0.7: zero, as float64 decides


def params_and_grads(dtype: torch.dtype = F32, seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Conv-like parameters (one channels-last, one 2-D) and six steps of gradients."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(32, 16, 3, 3), (64, 32, 1, 1), (24, 40), (16, 8, 3, 3)]
    params = [torch.randn(s, generator=gen, dtype=dtype) * 0.3 for s in shapes]
    params[3] = params[3].contiguous(memory_format=torch.channels_last)
    grads = [[torch.randn(p.shape, generator=gen, dtype=dtype).contiguous(memory_format=_format(p)) * 0.1
              for p in params] for _ in range(6)]
    return params, grads


def _format(p: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if p.ndim == 4 and not p.is_contiguous() else torch.contiguous_format


def run(params: list[torch.Tensor], grads: list[list[torch.Tensor]], *, decoupled: bool,
        opt: ProxAdam | None = None) -> tuple[list[torch.Tensor], ProxAdam]:
    """Six steps; λ changes after the third, the prox is off for the fifth."""
    params = [p.clone().requires_grad_(True) for p in params]
    opt = opt or ProxAdam([dict(params=params, penalty="l1_l2", lambda_=0.02)], lr=0.05, weight_decay=0.1,
                          decoupled_weight_decay=decoupled)
    for k, step in enumerate(grads):
        opt.param_groups[0]["lambda_"] = 0.02 if k < 3 else 0.05
        opt.param_groups[0]["prox"] = k != 4
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam"])
def test_the_fused_step_matches_adam_then_the_torch_prox(decoupled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel.library() is None:
        pytest.skip("no C compiler here")
    params, grads = params_and_grads()
    fused, opt = run(params, grads, decoupled=decoupled)
    assert all("prox_norms" in opt.state[p] for p in opt.param_groups[0]["params"])  # the kernel took the steps
    torch_code(monkeypatch)
    ref, _ = run(params, grads, decoupled=decoupled)
    for a, b in zip(fused, ref):
        assert a.stride() == b.stride()
        assert torch.equal(a.eq(0), b.eq(0))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(bool(a.eq(0).any()) for a in fused)


def test_a_step_without_the_kernel_drops_the_expansion_points() -> None:
    params, grads = params_and_grads()
    _, opt = run(params, grads[:5], decoupled=True)  # the fifth step has the prox off
    assert not any("prox_norms" in opt.state[p] for p in opt.param_groups[0]["params"])


def test_results_do_not_depend_on_the_thread_count() -> None:
    params, grads = params_and_grads(seed=3)
    torch.set_num_threads(1)
    one, _ = run(params, grads, decoupled=True)
    torch.set_num_threads(2)
    two, _ = run(params, grads, decoupled=True)
    torch.set_num_threads(1)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("bad", ["zeros", "huge", "tiny", "nan", "negative", "float64", "short"])
def test_any_expansion_points_give_the_same_step(bad: str) -> None:
    """Expansion points only decide how many groups the moments certify, never the result."""
    if kernel.library() is None:
        pytest.skip("no C compiler here")
    params, grads = params_and_grads(seed=5)
    _, opt = run(params, grads[:4], decoupled=True)  # the fourth step leaves expansion points
    twin = copy.deepcopy(opt)
    for p in twin.param_groups[0]["params"]:
        norms = twin.state[p]["prox_norms"]
        twin.state[p]["prox_norms"] = {
            "zeros": torch.zeros_like(norms), "huge": torch.full_like(norms, 1e30), "tiny": torch.full_like(norms, 1e-30),
            "nan": torch.full_like(norms, math.nan), "negative": -norms, "float64": norms.double(), "short": norms[1:],
        }[bad]
    outs = []
    for o in (opt, twin):
        ps = o.param_groups[0]["params"]
        with torch.no_grad():
            for p, g in zip(ps, grads[5]):
                p.grad = g.clone()
        o.step()
        outs.append([p.detach().clone() for p in ps])
    for a, b in zip(*outs):
        assert torch.equal(a.eq(0), b.eq(0))
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------- regressions (an adversarial review)
def needs_kernel() -> None:
    if kernel.library() is None:
        pytest.skip("no C compiler here")


def steps_both_ways(make, monkeypatch: pytest.MonkeyPatch, steps: int = 3) -> tuple[list, list]:
    """Parameters after ``steps`` steps of ``make()`` = (params, optimizer, grads per step), kernel then torch code."""
    outs = []
    for off in (False, True):
        if off:
            torch_code(monkeypatch)
        params, opt, grads = make()
        for k in range(steps):
            for p, g in zip(params, grads[k]):
                p.grad = g.clone()
            opt.step()
        outs.append([p.detach().clone() for p in params])
    return outs[0], outs[1]


def test_regression_tensors_of_two_dtypes_in_one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """One dtype per kernel call: a parameter turned float64 after the optimizer was built once corrupted the heap."""
    needs_kernel()

    def make():
        gen = torch.Generator().manual_seed(0)
        a = torch.nn.Parameter(torch.randn(64, 32, generator=gen))
        b = torch.nn.Parameter(torch.randn(64, 32, generator=gen))
        opt = ProxAdam([a, b], lr=1e-2, penalty="l1_l2", lambda_=0.1, fused=True)
        a.data = a.data.double()
        grads = [[torch.randn(64, 32, generator=gen, dtype=F64), torch.randn(64, 32, generator=gen)] for _ in range(3)]
        return [a, b], opt, grads

    fused, ref = steps_both_ways(make, monkeypatch)
    for x, y in zip(fused, ref):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_regression_the_same_tensor_twice_goes_to_the_torch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    needs_kernel()
    w = torch.randn(256, 64)
    d = torch.rand(256, 64) + 0.5
    assert not kernel.usable([w, w], [d, d])
    assert not kernel.usable([w[:128], w[64:]], [d[:128], d[64:]])  # overlapping views too
    assert kernel.usable([w[:128], w[128:]], [d[:128], d[128:]])


def test_regression_expansion_points_far_above_the_norms_zero_no_live_group() -> None:
    """1 − ρr cancels when ρd ≫ τ; the zero test's margin must grow with it."""
    needs_kernel()
    from optim.prox import adam_group_l1_l2_

    n, groups, tau = 16, 2000, 0.5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, groups, generator=gen, dtype=F64)
    x *= tau * (1 + torch.logspace(-6, -4, groups, dtype=F64)) / (2 * x.norm(dim=0))  # ‖Dx‖ just above τ, d = 2
    for dtype, factor in ((F32, 1e3), (F64, 1e11)):
        z = x.to(dtype)
        live = (2 * z.double()).norm(dim=0) > tau
        adam_group_l1_l2_(
            [z], grads=[torch.zeros_like(z)], exp_avgs=[torch.zeros_like(z)], exp_avg_sqs=[torch.full_like(z, 4.0)],
            norms=[factor * z.norm(dim=0)], alpha=[1.0], sqrt_offsets=[0.0], lam=tau / 4, reweight=True,
            decay=1.0, weight_decay=0.0, betas=(0.9, 1.0))
        assert not bool(z.eq(0).all(0)[live].any())


def test_regression_strided_expansion_points_are_not_read() -> None:
    needs_kernel()
    params, grads = params_and_grads(seed=7)
    _, opt = run(params, grads[:4], decoupled=True)
    twin = copy.deepcopy(opt)
    for p in twin.param_groups[0]["params"]:
        norms = twin.state[p]["prox_norms"]
        twin.state[p]["prox_norms"] = norms[:1].expand(norms.shape)  # stride 0: once read past its storage
    outs = []
    for o in (opt, twin):
        for p, g in zip(o.param_groups[0]["params"], grads[5]):
            p.grad = g.clone()
        o.step()
        outs.append([p.detach().clone() for p in o.param_groups[0]["params"]])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)


def test_regression_a_gradient_spike_leaves_the_weights_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    """(1 − β₂)·g·g as addcmul forms it (finite at g = 1e20); r finite when d is infinite."""
    needs_kernel()

    def make():
        gen = torch.Generator().manual_seed(1)
        p = (torch.randn(64, 32, generator=gen) * 0.1).requires_grad_(True)
        grads = [[torch.randn(64, 32, generator=gen) * 1e-2] for _ in range(3)]
        grads[1][0][5] = 1e20
        return [p], ProxAdam([p], lr=1e-3, penalty="l1_l2", lambda_=1e-3), grads

    (fused,), (ref,) = steps_both_ways(make, monkeypatch)
    assert bool(fused.isfinite().all()) and torch.equal(fused.eq(0), ref.eq(0))
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-7)


def test_regression_one_minus_beta_is_formed_in_double(monkeypatch: pytest.MonkeyPatch) -> None:
    """In float32, 1 − 0.9999999f loses every digit; torch forms 1 − β₂ in double."""
    needs_kernel()

    def make():
        gen = torch.Generator().manual_seed(2)
        p = torch.randn(32, 16, 3, 3, generator=gen).requires_grad_(True)
        grads = [[torch.randn(32, 16, 3, 3, generator=gen)] for _ in range(3)]
        return [p], ProxAdam([p], lr=1e-3, betas=(0.9, 0.9999999), penalty="l1_l2", lambda_=1e-3), grads

    (fused,), (ref,) = steps_both_ways(make, monkeypatch)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7)


def test_a_group_too_large_for_the_scratch_goes_to_the_torch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    needs_kernel()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 96, 96, generator=gen)  # 9216 elements per row and group
    d = torch.rand(2, 3, 96, 96, generator=gen) + 0.5
    assert kernel.weighted_lasso([x.clone()], [d], [1.0], 1e-6) is None
    z = x.clone()
    prox_group_l1_l2_([z], alpha=1.0, lam=0.002, denoms=[d])
    torch_code(monkeypatch)
    ref = x.clone()
    prox_group_l1_l2_([ref], alpha=1.0, lam=0.002, denoms=[d])
    assert torch.equal(z, ref)


def test_a_cache_folder_others_can_write_is_not_used(fresh_library: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """A library someone else could have planted is never loaded: the build goes to the next folder."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    fresh_library.mkdir(parents=True)
    fresh_library.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert kernel.library() is not None
    assert not list(fresh_library.glob("prox-*.so"))
    assert list((tmp_path / "tmp").glob("gsmtl-*/prox-*.so"))


def test_a_damaged_build_is_built_again(fresh_library: Path) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    built = kernel._build()  # built, not loaded: a loaded library's file must not be written over
    whole = built.read_bytes()
    built.write_bytes(whole[: len(whole) // 3])  # truncated: dlopen would map it and crash on use
    assert kernel.library() is not None
    assert built.read_bytes() == whole


def test_a_killed_builds_leftover_goes_at_the_next_build_and_a_concurrent_one_stays(fresh_library: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILL skips a build's ``finally``; the next build removes its temporary file once it is too old
    to belong to a build still running."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here (its version is part of the build's key)")
    monkeypatch.setattr(kernel, "_compile", lambda cc, flags, out: Path(out).write_bytes(b"library"))
    fresh_library.mkdir(parents=True, mode=0o700)
    old = [fresh_library / ".prox-killed.so", fresh_library / ".prox-killed.so.sha256"]
    running = fresh_library / ".prox-running.so"
    age = 2 * kernel.COMPILE_TIMEOUT_S + 1
    for leftover in (*old, running):
        leftover.write_bytes(b"partial")
    for leftover in old:
        os.utime(leftover, (time.time() - age, time.time() - age))
    built = kernel._build()
    assert built.read_bytes() == b"library" and kernel._intact(built)
    assert not any(leftover.exists() for leftover in old) and running.exists()
    assert sorted(p.name for p in fresh_library.iterdir()) == sorted([built.name, f"{built.name}.sha256", running.name])


def test_a_compiler_given_with_flags(fresh_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("CC", f"{cc} -Wall")
    assert kernel.library() is not None


def test_a_large_tensor_is_shared_between_threads() -> None:
    """Tiles of one large tensor go to both workers; its results do not depend on the split."""
    if kernel.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1024, 1100, generator=gen) * torch.randn(1, 1100, generator=gen).exp()
    d = torch.rand(1024, 1100, generator=gen) + 0.5
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        z = x.clone()
        prox_group_l1_l2_([z], alpha=1.0, lam=0.9, denoms=[d])
        out.append(z)
    torch.set_num_threads(1)
    assert torch.equal(*out) and 0 < int(out[0].eq(0).all(0).sum()) < 1100
