"""ProxAdam on CUDA: the same steps as on the CPU, and no host synchronisation per group or tensor."""

from __future__ import annotations

import pytest
import torch

from optim import ProxAdam

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _params(device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32, 3, 3), (128, 64, 1, 1), (32, 128, 3, 3), (256, 128, 3, 3)]
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_() for shape in shapes]


def _run(device: str, steps: int = 5) -> list[torch.Tensor]:
    params = _params(device)
    optimizer = ProxAdam([{"params": params, "penalty": "l1_l2", "lambda_": 0.05, "decoupled_weight_decay": True,
                           "weight_decay": 0.1}], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device)
        optimizer.step()
    return [p.detach().cpu() for p in params]


def test_cuda_steps_equal_cpu_steps() -> None:
    for cpu, cuda in zip(_run("cpu"), _run("cuda")):
        torch.testing.assert_close(cuda, cpu, rtol=1e-9, atol=1e-12)
        assert torch.equal(cuda.eq(0).flatten(2).all(2).all(0), cpu.eq(0).flatten(2).all(2).all(0))  # the same zero groups


def test_a_cuda_step_syncs_the_host_at_most_a_few_times() -> None:
    """One sync lists the open groups of a weighted lasso step; none per group or tensor (documented in optim.prox)."""
    params = _params("cuda")
    optimizer = ProxAdam([{"params": params, "penalty": "l1_l2", "lambda_": 0.05}], lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()  # state creation
    torch.cuda.synchronize()
    syncs = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            optimizer.step()
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(syncs) <= 8, [str(w.message) for w in syncs]
