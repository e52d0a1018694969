"""Early stopping on validation losses: the global criterion and, in multitask runs, one per task.

A task whose validation loss has not improved for ``task_earlystop_patience`` epochs stops:
its head is frozen and its loss leaves the training total (the study's ``flag``), and its best
weights stay in ``<task>_checkpoint.pt``. The global criterion watches the plain sum of the
task losses, a stopped task counting with its best loss, so learned loss weights cannot move it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass
class EarlyStopping:
    """Stop after ``patience`` validations without a strictly lower loss."""

    patience: int
    best: float = math.inf
    best_epoch: int = -1
    counter: int = 0
    stopped: bool = False

    def step(self, value: float, epoch: int) -> bool:
        """Record one validation loss; True when it is the best so far (save a checkpoint)."""
        if value < self.best:
            self.best, self.best_epoch, self.counter = value, epoch, 0
            return True
        self.counter += 1
        self.stopped = self.counter >= self.patience
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class TaskStopping:
    """The global and per-task criteria of one trial, and which tasks still train.

    ``on_best(name, epoch, loss)`` is called whenever a criterion improves (``name`` is a task
    or ``"total"``): the trainer saves the matching checkpoint there.
    """

    TOTAL = "total"

    def __init__(self, tasks: Sequence[str], *, patience: int, task_patience: int, per_task: bool) -> None:
        self.tasks = list(tasks)
        self.total = EarlyStopping(patience)
        self.per_task = {name: EarlyStopping(task_patience) for name in tasks} if per_task else {}

    @property
    def active(self) -> list[str]:
        """Tasks that still train (all of them in a single-task or per-task-free run)."""
        return [name for name in self.tasks if not (name in self.per_task and self.per_task[name].stopped)]

    @property
    def finished(self) -> bool:
        """Global early stop, or every task stopped (also true right after resuming such a run)."""
        return self.total.stopped or (bool(self.per_task) and not self.active)

    def step(self, epoch: int, losses: Mapping[str, float], on_best: Callable[[str, int, float], None]) -> float:
        """Update the criteria with one validation; returns the validation total."""
        for name in [t for t in self.active if t in self.per_task]:
            if self.per_task[name].step(losses[name], epoch):
                on_best(name, epoch, losses[name])
        total = sum(
            self.per_task[name].best if name in self.per_task and self.per_task[name].stopped else losses[name]
            for name in self.tasks
        )
        if self.total.step(total, epoch):
            on_best(self.TOTAL, epoch, total)
        return total

    def freeze_stopped(self, heads: nn.ModuleDict) -> list[str]:
        """Freeze the heads of stopped tasks; returns the tasks frozen by this call."""
        newly = [name for name in self.tasks if name not in self.active and next(iter(heads[name].parameters())).requires_grad]
        for name in newly:
            heads[name].requires_grad_(False)
        return newly

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.state_dict(), "tasks": {name: s.state_dict() for name, s in self.per_task.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total.load_state_dict(state["total"])
        for name, stopper in state["tasks"].items():
            self.per_task[name].load_state_dict(stopper)
