"""ProxAdam on CUDA: the same steps as on the CPU, and no host synchronisation per group or tensor."""

from __future__ import annotations

import pytest
import torch

from optim import ProxAdam

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _params(device: str, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32, 3, 3), (128, 64, 1, 1), (32, 128, 3, 3), (256, 128, 3, 3)]
    # Groups from 1e-3 to 1 in scale, so that the prox zeroes some, shrinks others and leaves the rest.
    return [(torch.randn(shape, generator=gen, dtype=torch.float64)
             * torch.logspace(-3, 0, shape[1], dtype=torch.float64).view(1, -1, 1, 1)).to(device, dtype).requires_grad_()
            for shape in shapes]


def _run(device: str, steps: int = 5, dtype: torch.dtype = torch.float64, **group) -> list[torch.Tensor]:
    params = _params(device, dtype)
    optimizer = ProxAdam([{"params": params, "penalty": "l1_l2", "lambda_": 0.05, "decoupled_weight_decay": True,
                           "weight_decay": 0.1, **group}], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype).to(device)
        optimizer.step()
    return [p.detach().cpu() for p in params]


def _zero_groups(t: torch.Tensor) -> torch.Tensor:
    return t.eq(0).flatten(2).all(2).all(0)


# The CPU runs torch's fused Adam and, weighted l1/l2 in float32, the C kernel; CUDA runs the
# multi-tensor (or per-tensor) Adam and the prox in torch code: two implementations checked against each other.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("group", [
    {"lambda_": 0.5}, {"lambda_": 5.0, "weighted": False}, {"lambda_": 0.5, "penalty": "group_mcp", "gamma": 3.0},
    {"lambda_": 5.0, "penalty": "group_mcp", "weighted": False}, {"lambda_": 0.5, "foreach": False},
], ids=["l1_l2", "l1_l2-unweighted", "mcp", "mcp-unweighted", "l1_l2-per-tensor"])  # λ: some groups zero, not all
def test_cuda_steps_equal_cpu_steps(group: dict, dtype: torch.dtype) -> None:
    tolerance = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    cpu_run, cuda_run = _run("cpu", dtype=dtype, **group), _run("cuda", dtype=dtype, **group)
    zeros = [_zero_groups(t) for t in cpu_run]
    assert any(z.any() for z in zeros) and not all(z.all() for z in zeros), "the prox zeroes some groups, not all"
    for cpu, cuda in zip(cpu_run, cuda_run):
        torch.testing.assert_close(cuda, cpu, **tolerance)
        assert torch.equal(_zero_groups(cuda), _zero_groups(cpu))  # the same zero groups


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
