"""Patience-based early stopping on a validation loss, with state that survives a resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


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
