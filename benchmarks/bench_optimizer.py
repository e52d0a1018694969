"""Time one optimizer step over ResNet-50's weights: torch AdamW against ProxAdam variants.

All conv weights form the proximal group, the other parameters a plain group. The state is
that of a long sparse training run: Adam's statistics are warm (t = 1000, v̂ = s² for a fixed
per-element gradient scale s = 1e-3·exp(N(0, 1)), so d spans about two decades inside a
group), ``--zero-fraction`` of the input-channel groups were pruned earlier (zero weights;
their gradients 1e-4 times smaller, as a dead channel's are), the live groups' norms are
log-normal, and λ shrinks the median live group by ``--shrink`` of its norm per step (the
unweighted prox gets the λ that does the same in its metric). Gradients are fresh noise
times s at every step. Prints the median step time over ``--steps`` steps after warm-up, its
ratio to both baselines, torch's fused AdamW and its foreach AdamW, and the fraction of zero
groups at the end. On the CPU ProxAdam's Adam part runs torch's fused kernel (see
:mod:`optim.prox_adam`), so "ProxAdam λ=0" shows what that part costs alone, except for the
weighted l1/l2 step, which runs the C kernel of :mod:`optim.kernel` (Adam and the prox fused);
"(torch code)" is that step with the kernel off. On CUDA the Adam part runs the foreach path
and the kernel does not apply. ``--device cuda`` on a machine without CUDA stops with a one-line error
(exit code 2).

    python -m benchmarks.bench_optimizer --device cpu --steps 10
    python -m benchmarks.bench_optimizer --device cpu --steps 10 --threads 1 --cpu-time   # on a busy machine
    python -m benchmarks.bench_optimizer --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision

from optim import ProxAdam, kernel
from optim.sparsity import summary

LR = 1e-3
PRUNED_GRAD = 1e-4


def make_model(device: torch.device, zero_fraction: float, seed: int = 0) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """ResNet-50 with log-normal group norms and pruned groups; returns it and the gradient scales."""
    gen = torch.Generator().manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    scales = []
    with torch.no_grad():
        for p in model.parameters():
            s = 1e-3 * torch.randn(p.shape, generator=gen).exp_()
            if p.ndim == 4:
                p.mul_(torch.randn(1, p.shape[1], 1, 1, generator=gen).exp_())
                if p.shape[1] >= 8:
                    pruned = torch.rand(p.shape[1], generator=gen) < zero_fraction
                    p[:, pruned] = 0
                    s[:, pruned] *= PRUNED_GRAD
            scales.append(s.to(device))
    return model.to(device), scales


def pick_lambdas(model: torch.nn.Module, scales: list[torch.Tensor], shrink: float) -> tuple[float, float]:
    """λ (weighted, unweighted) whose step shrinks the median live group by ``shrink`` of its norm."""
    weighted, plain = [], []
    for p, s in zip(model.parameters(), scales):
        if p.ndim == 4:
            w = p.detach()
            live = w.ne(0).any(0).flatten(1).any(1)
            root = LR * math.sqrt(w[:, 0].numel())
            weighted.append((w * s).square().sum((0, 2, 3)).sqrt()[live] / root)
            plain.append(w.square().sum((0, 2, 3)).sqrt()[live] / root)
    return tuple(shrink * torch.cat(v).median().item() for v in (weighted, plain))


def param_groups(model: torch.nn.Module, **prox: object) -> list[dict]:
    conv = [p for p in model.parameters() if p.ndim == 4]
    rest = [p for p in model.parameters() if p.ndim != 4]
    return [dict(params=conv, **prox), dict(params=rest)]


def warm_state(
    opt: torch.optim.Optimizer, model: torch.nn.Module, scales: list[torch.Tensor], steps: int = 1000
) -> None:
    """Create Adam's state as after ``steps`` steps of training: v̂ = s², m = 0."""
    beta2 = opt.param_groups[0]["betas"][1]
    for p, s in zip(model.parameters(), scales):
        opt.state[p] = {
            "step": torch.tensor(float(steps)),
            "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": s.square() * (1 - beta2**steps),
        }


def time_steps(
    opt: torch.optim.Optimizer, model: torch.nn.Module, scales: list[torch.Tensor], warmup: int, steps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Set fresh random gradients before each step; time the steps after ``warmup`` with ``clock``."""
    device = scales[0].device
    warm_state(opt, model, scales)
    gen = torch.Generator(device=device).manual_seed(1)
    times = []
    for i in range(warmup + steps):
        for p, s in zip(model.parameters(), scales):
            p.grad = torch.randn(p.shape, generator=gen, device=device).mul_(s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(clock() - start)
    return times


TORCH_CODE = "  (torch code)"


def variants(lam: float, lam_plain: float) -> dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]]:
    common = dict(lr=LR, weight_decay=0.01, decoupled_weight_decay=True)
    return {
        "torch AdamW (fused)": lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.01, fused=True),
        "torch AdamW (foreach)": lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.01, foreach=True),
        "ProxAdam λ=0": lambda m: ProxAdam(param_groups(m), **common),
        "ProxAdam l1/l2 weighted": lambda m: ProxAdam(param_groups(m, penalty="l1_l2", lambda_=lam), **common),
        TORCH_CODE: lambda m: ProxAdam(param_groups(m, penalty="l1_l2", lambda_=lam), **common),
        "ProxAdam l1/l2 unweighted": lambda m: ProxAdam(
            param_groups(m, penalty="l1_l2", lambda_=lam_plain, weighted=False), **common),
        "ProxAdam MCP weighted": lambda m: ProxAdam(
            param_groups(m, penalty="group_mcp", lambda_=lam, gamma=3.0), **common),
    }


@contextlib.contextmanager
def kernel_off():
    """Run the torch code of the weighted prox instead of the C kernel."""
    library = kernel.library
    kernel.library = lambda: None
    try:
        yield
    finally:
        kernel.library = library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per optimizer (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--zero-fraction", type=float, default=0.5, help="groups pruned before the run")
    parser.add_argument("--shrink", type=float, default=1e-3, help="per-step shrink of the median live group")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock (with --threads 1, on a busy machine)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_optimizer: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    device = torch.device(args.device)
    lam, lam_plain = pick_lambdas(*make_model(device, args.zero_fraction), args.shrink)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu threads={torch.get_num_threads()}"
    print(f"device={args.device} ({where}) λ={lam:.3g} (unweighted {lam_plain:.3g}) "
          f"{'CPU' if args.cpu_time else 'wall'} time, median of {args.steps} steps after {args.warmup} warm-up")
    rows = []
    for name, make_opt in variants(lam, lam_plain).items():
        if name == TORCH_CODE and device.type != "cpu":
            continue  # the kernel is the CPU's
        model, scales = make_model(device, args.zero_fraction)
        opt = make_opt(model)
        with kernel_off() if name == TORCH_CODE else contextlib.nullcontext():
            ms = 1e3 * statistics.median(time_steps(opt, model, scales, args.warmup, args.steps, clock))
        rows.append((name, ms, summary(model)["group_sparsity"]))
    fused, foreach = rows[0][1], rows[1][1]  # the baselines
    print(f"{'optimizer':28s} {'ms/step':>9s} {'× fused':>8s} {'× foreach':>10s} {'zero groups':>12s}")
    for name, ms, zero in rows:
        print(f"{name:28s} {ms:9.1f} {ms / fused:8.2f} {ms / foreach:10.2f} {zero:12.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
