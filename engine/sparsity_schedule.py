"""The group-sparsity policy of a trial, as hooks the trainer calls: λ over time, the prox switch, the penalty.

- λ: ``bb_optimizer_params.lambda``, or ``lambda_list[epoch // lambda_every]`` while the list
  lasts, then its last value (what the study's trainer did: it wrote each entry into the
  config, so the last one stayed);
- the proximal step runs from epoch ``sparsity_threshold`` on (a dense warm-up before);
- ``penalty_in_loss`` also adds the study's penalty term to the loss (the study always did,
  on top of the prox; the prox alone is the method);
- each epoch's sparsity measures (and the penalty's value) for the history and the logs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import optim
from optim import sparsity
from utils.config import ExperimentConfig


class SparsitySchedule:
    """Turns the optimizer's group-sparsity knobs between epochs; a no-op without ``group_sparsity``."""

    def __init__(self, cfg: ExperimentConfig, optimizer: torch.optim.Optimizer) -> None:
        self.enabled = cfg.group_sparsity
        self.base_lambda = cfg.bb_optimizer_params.lambda_ or 0.0
        self.schedule = list(cfg.lambda_list or [])
        self.every = cfg.lambda_every
        self.threshold = cfg.sparsity_threshold
        self.in_loss = cfg.penalty_in_loss and cfg.group_sparsity
        self.optimizer = optimizer
        self.lam = 0.0

    def lambda_at(self, epoch: int) -> float:
        """λ of ``epoch``: the list entry of its block of ``lambda_every`` epochs, the last entry after the list."""
        if not self.enabled:
            return 0.0
        if self.schedule:
            return self.schedule[min(epoch // self.every, len(self.schedule) - 1)]
        return self.base_lambda

    def on_epoch_start(self, epoch: int) -> float:
        """Set λ and the proximal switch for ``epoch``; returns λ."""
        self.lam = self.lambda_at(epoch)
        if self.enabled:
            optim.set_lambda(self.optimizer, self.lam)
            optim.set_prox(self.optimizer, epoch >= self.threshold)
        return self.lam

    def loss_term(self) -> Tensor | None:
        """The study's penalty term to add to the loss, or None (``penalty_in_loss`` off)."""
        return optim.study_penalty_tensor(self.optimizer) if self.in_loss else None

    def measures(self, backbone: nn.Module) -> dict[str, float]:
        """The backbone's sparsity (and, under group sparsity, the penalty's value) after an epoch."""
        summary = sparsity.summary(backbone)
        if self.enabled:
            with torch.no_grad():
                summary["penalty"] = float(optim.penalty_tensor(self.optimizer))
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lambda"])
