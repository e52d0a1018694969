"""One pass over a loader: train an epoch, or evaluate a split. Plain functions, as torchvision's references.

Host syncs stay off the hot path: losses accumulate on the device and are read once per epoch
(plus every ``log_every`` steps for the progress bar); metrics are torchmetrics states read
once per split. Non-finite losses and gradients are flagged on the device and the flags are
read with those same loss reads, so detecting a diverging run costs no extra sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine import distributed
from engine.distributed import Context
from engine.runtime import autocast, read_scalars, to_device
from tasks.base import Task
from utils.errors import NumericalFault


@dataclass(frozen=True)
class StepOptions:
    """How a training pass runs: mixed precision, memory format, how often the host looks."""

    amp: bool = False
    channels_last: bool = False
    max_batches: int | None = None
    log_every: int = 25


@dataclass
class PartialEpoch:
    """Where a training pass stopped on request, with what resuming it exactly needs.

    The random state at the epoch's start re-creates the same shuffle and worker seeds; the
    first ``steps`` batches are then drawn again and skipped, and the global generator is set
    to its state at the stop (``rng_now``), so the remaining steps see what they would have.
    """

    steps: int
    count: int
    sums: dict[str, float]
    seconds: float
    rng_start: dict[str, Any]
    rng_now: dict[str, Any]
    signal: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PartialEpoch:
        return cls(**state)


def _global_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Faults:
    """The first step at which each finiteness check failed (-1: never), kept on the device.

    Checked per step: each task's target (float targets), the images, each task's loss, the
    gradient norm. A NaN pixel under a loss's validity mask leaves the loss finite and poisons
    only the gradient, so the data checks are what name the task then; at one step a cause
    (target, images) is reported before its effects (loss, gradient).
    """

    def __init__(self, tasks: Sequence[str], device: torch.device) -> None:
        self.checks = [*(f"values in the target of task {t}" for t in tasks), "values in the input images",
                       *(f"loss of task {t}" for t in tasks), "gradient of the total loss"]
        self.first = torch.full((len(self.checks),), -1, dtype=torch.long, device=device)

    def record(self, targets: Sequence[Tensor], images: Tensor, losses: Sequence[Tensor], grad_norm: Tensor, step: int) -> None:
        finite = [t.isfinite().all() if t.is_floating_point() else torch.ones((), dtype=torch.bool, device=t.device)
                  for t in targets]
        finite += [images.isfinite().all(), *(loss.detach().isfinite().reshape(()) for loss in losses),
                   grad_norm.isfinite().reshape(())]
        bad = ~torch.stack(finite)
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def raise_if_any(self, first: Sequence[float], where: str) -> None:
        """Raise NumericalFault naming the earliest failed check and its step (``first`` read from :attr:`first`)."""
        raised = [(step, order) for order, step in enumerate(first) if step >= 0]
        if raised:
            step, order = min(raised)
            raise NumericalFault(f"{where}, step {int(step)}: non-finite {self.checks[order]} "
                                 "(the run diverged or the data holds NaN/Inf)")


def train_one_epoch(
    model: nn.Module, tasks: Mapping[str, Task], active: Sequence[str], *,
    combine: Callable[[Mapping[str, Tensor], Sequence[str]], Tensor],
    optimizer: torch.optim.Optimizer, loader: DataLoader, device: torch.device,
    options: StepOptions = StepOptions(), extra_loss: Callable[[], Tensor] | None = None,
    desc: str = "train", where: str = "training", resume: PartialEpoch | None = None,
    stop: Callable[[], str | None] = lambda: None, context: Context = distributed.SINGLE,
    shared: Sequence[Tensor] = (), after_step: Callable[[], None] | None = None,
) -> dict[str, float] | PartialEpoch:
    """One pass over the training split; returns mean losses per active task and in total.

    ``combine`` weighs the task losses into the back-propagated total (``LossWeighting``),
    ``extra_loss`` adds a term (the penalty, when ``penalty_in_loss``). Raises NumericalFault
    (naming ``where``, the step and the task) when a loss or the gradient is not finite.
    ``stop`` is polled after every step: when it names a signal, the pass ends there and
    returns a :class:`PartialEpoch`, which ``resume`` continues exactly. Under torchrun
    (``context``) ``model`` is the DDP wrapper; the epoch's means are reduced over the ranks,
    and a stop request is agreed on at the loss reads, so every rank stops at the same step.
    ``shared`` are trained parameters outside the model (the loss weights): their gradients
    are averaged over the ranks, as DDP averages the model's. ``after_step`` runs after every
    optimizer step (the sparsity schedule's per-step policy).
    """
    model.train()
    started = time.perf_counter()
    rng_start = resume.rng_start if resume is not None else {**_global_rng(), "loader": _loader_state(loader)}
    if resume is not None:
        _set_global_rng(rng_start)
        if loader.generator is not None and rng_start.get("loader") is not None:
            loader.generator.set_state(rng_start["loader"])
    sums = {name: torch.zeros((), device=device) for name in [*active, "total"]}
    count, first_step = 0, 0
    if resume is not None:
        for name, value in resume.sums.items():
            if name in sums:
                sums[name] += value
        count, first_step = resume.count, resume.steps
    faults = _Faults(active, device)
    total_steps = len(loader) if options.max_batches is None else min(options.max_batches, len(loader))
    batches = islice(loader, total_steps)
    for _ in islice(batches, first_step):  # the steps done before the stop: same batches, skipped
        pass
    if resume is not None:
        _set_global_rng(resume.rng_now)
    bar = tqdm(batches, total=total_steps, initial=first_step, desc=desc, leave=False, dynamic_ncols=True)
    params = [p for p in [*model.parameters(), *shared] if p.requires_grad]
    for step, batch in enumerate(bar, start=first_step):
        images, targets = to_device(batch, device, options.channels_last)
        with autocast(device, options.amp):
            outputs = model(images, tasks=active)
        losses = {name: tasks[name].loss(tasks[name].predict(outputs[name].float()), targets[name]) for name in active}
        total = combine(losses, active)
        if extra_loss is not None:
            total = total + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.average_gradients(shared, context)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        faults.record([targets[name] for name in active], images, list(losses.values()), grad_norm, step)
        optimizer.step()
        if after_step is not None:
            after_step()

        batch_size = images.shape[0]
        for name, loss in losses.items():
            sums[name] += loss.detach() * batch_size
        sums["total"] += total.detach() * batch_size
        count += batch_size
        signal = stop()
        at_read = (step + 1) % options.log_every == 0
        if at_read:
            mean, *first = torch.cat([(sums["total"] / count).reshape(1).double(), faults.first.double()]).tolist()
            faults.raise_if_any(first, where)
            bar.set_postfix(loss=f"{mean:.4f}")
        if context.distributed:  # ranks stop together, at a loss read, if any of them was asked to
            signal = (signal or "SIGTERM") if at_read and distributed.agree([signal is not None], context)[0] else None
        if signal is not None and step + 1 < total_steps:
            names = list(sums)
            numbers = torch.cat([torch.stack([sums[n] for n in names]).double(), faults.first.double()]).tolist()
            faults.raise_if_any(numbers[len(names):], where)
            seconds = time.perf_counter() - started + (resume.seconds if resume is not None else 0.0)
            return PartialEpoch(steps=step + 1, count=count, sums=dict(zip(names, numbers[: len(names)])),
                                seconds=seconds, rng_start=rng_start, rng_now=_global_rng(), signal=signal)
    names = list(sums)
    totals = distributed.sum_across(torch.stack([*(sums[name] for name in names), torch.tensor(float(count), device=device)]).double(), context)
    first = faults.first.double()
    if context.distributed:  # the earliest fault of any rank, -1 for none
        first = distributed.min_across(torch.where(first < 0, torch.inf, first), context).nan_to_num(posinf=-1.0)
    numbers = torch.cat([totals[:-1] / totals[-1].clamp(min=1), first]).tolist()  # one host sync for losses and flags
    faults.raise_if_any(numbers[len(names):], where)
    return dict(zip(names, numbers[: len(names)]))


def _loader_state(loader: DataLoader) -> Tensor | None:
    return None if loader.generator is None else loader.generator.get_state()


@torch.no_grad()
def evaluate(
    model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader, device: torch.device, *,
    amp: bool = False, channels_last: bool = False, desc: str = "val", context: Context = distributed.SINGLE,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean loss and split-level metrics of ``tasks`` over ``loader`` (the model is put in eval mode).

    Under torchrun each rank sees a shard; losses are summed over the ranks and the
    torchmetrics states synchronise in ``compute``, so every rank gets the whole split's values.
    """
    model.eval()
    metrics = {name: task.metric().to(device) for name, task in tasks.items()}
    sums = {name: torch.zeros((), device=device) for name in tasks}
    count = 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        images, targets = to_device(batch, device, channels_last)
        with autocast(device, amp):
            outputs = model(images, tasks=list(tasks))
        for name, task in tasks.items():
            prediction = task.predict(outputs[name].float())
            sums[name] += task.loss(prediction, targets[name]).detach() * images.shape[0]
            metrics[name].update(prediction, targets[name])
        count += images.shape[0]
    names = list(sums)
    totals = distributed.sum_across(torch.stack([*(sums[n] for n in names), torch.tensor(float(count), device=device)]).double(), context)
    losses = read_scalars({name: totals[i] / totals[-1].clamp(min=1) for i, name in enumerate(names)})
    computed = {name: read_scalars(metric.compute()) for name, metric in metrics.items()}
    return losses, computed
