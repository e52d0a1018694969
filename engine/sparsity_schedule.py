"""The group-sparsity policy of a trial, as hooks the trainer calls: λ over time, the prox switch, the penalty.

- λ: ``bb_optimizer_params.lambda``, or ``lambda_list[epoch // lambda_every]`` while the list
  lasts, then its last value (what the study's trainer did: it wrote each entry into the
  config, so the last one stayed);
- **target-sparsity mode** (``target_group_sparsity``): λ is the controlled variable of a
  proportional-integral controller on the group-sparsity error, in log space (see
  :class:`LambdaController`), which brings the sparsity near the target by ``target_epoch``.
  With ``freeze_lambda_after_target`` (default), when epoch ``target_epoch`` starts (at the
  end of the epoch before it; of epoch 1 when ``target_epoch`` is 1) λ is frozen and with it
  the sparsity pattern, so the target epoch trains, and is measured, at the target: the groups held at zero are the ``round(target · groups)`` weakest
  (smallest ‖w_g‖/λ_g; the zero groups first), the others train on, the prox stops. So the
  model converges at a fixed objective (the loss on the surviving channels) and at the target
  sparsity, to one group. (Under a fixed λ the weighted prox alone lets groups near the
  threshold die and revive from step to step: a flicker of several points on small models,
  which a target band of ±2 points cannot absorb.)
- the proximal step runs from epoch ``sparsity_threshold`` on (a dense warm-up before);
- ``finetune_epochs``: after the main epochs the zero groups are kept exactly zero (the prox
  off, their weights reset to zero after every step) so the surviving channels recover;
- ``penalty_in_loss`` also adds the study's penalty term to the loss (the study always did,
  on top of the prox; the prox alone is the method);
- each epoch's sparsity measures (and the penalty's value) for the history and the logs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

import optim
from optim import sparsity
from utils.config import ExperimentConfig

#: λ the controller starts from when the config gives none (λ = 0 or None).
DEFAULT_START_LAMBDA = 1e-5


@dataclass
class LambdaController:
    """Velocity-form PI control of log λ on the group-sparsity error e = target − s̄.

    s̄ is the measured group sparsity smoothed over updates (an exponential average with
    weight ``smoothing`` on the new value): groups near the threshold flicker from step to
    step, and the loop must not chase that noise. Every ``update_every`` training steps:
    Δ log λ = kp·(e − e_prev) + ki·e (twice ki when over the target: a zero group comes back
    only as Adam's steps outgrow the threshold, slower than groups die), clipped to
    ±``max_step`` (a rate limit: λ changes by at most e^max_step per update), with no change
    inside the dead band |e| ≤ ``band``/4. A positive error (too few zero groups) raises λ. Sparsity answers λ within a few steps (a
    group is zeroed as soon as ‖Dx‖ ≤ αλ_g), which is why a fast, integral-dominated loop works.
    """

    target: float
    log_lambda: float
    kp: float = 0.5
    ki: float = 1.0
    max_step: float = 0.25
    smoothing: float = 0.5
    band: float = 0.02
    smoothed: float | None = None
    previous_error: float = 0.0
    frozen: bool = False
    reached: bool = False

    @property
    def lam(self) -> float:
        return math.exp(self.log_lambda)

    def update(self, measured: float) -> float:
        """Take one sparsity measurement; returns the new λ (unchanged when frozen)."""
        self.smoothed = measured if self.smoothed is None else self.smoothed + self.smoothing * (measured - self.smoothed)
        error = self.target - self.smoothed
        self.reached = self.reached or abs(error) <= self.band
        if not self.frozen and abs(error) > self.band / 4:
            gain = self.ki if error > 0 else 2 * self.ki  # revived groups come back slower than they die
            step = self.kp * (error - self.previous_error) + gain * error
            self.log_lambda += max(-self.max_step, min(self.max_step, step))
        self.previous_error = error
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class SparsitySchedule:
    """Turns the optimizer's group-sparsity knobs between epochs and steps; a no-op without ``group_sparsity``."""

    def __init__(self, cfg: ExperimentConfig, optimizer: torch.optim.Optimizer, backbone: nn.Module) -> None:
        self.enabled = cfg.group_sparsity
        self.base_lambda = cfg.bb_optimizer_params.lambda_ or 0.0
        self.schedule = list(cfg.lambda_list or [])
        self.every = cfg.lambda_every
        self.threshold = cfg.sparsity_threshold
        self.in_loss = cfg.penalty_in_loss and cfg.group_sparsity
        self.optimizer, self.backbone = optimizer, backbone
        self.main_epochs = cfg.epochs
        self.target_epoch = cfg.target_epoch or max(1, math.ceil(cfg.epochs / 3))
        self.freeze = cfg.freeze_lambda_after_target
        self.update_every = cfg.target_update_every
        self.controller = None
        if cfg.target_group_sparsity is not None and cfg.group_sparsity:
            start = self.base_lambda if self.base_lambda > 0 else DEFAULT_START_LAMBDA
            self.controller = LambdaController(target=cfg.target_group_sparsity, log_lambda=math.log(start))
        self.lam = 0.0
        self.epoch = 0
        self.steps = 0
        self.held: list[Tensor] | None = None  # per penalised weight, the zero groups held at zero while fine-tuning

    @property
    def finetuning(self) -> bool:
        return self.epoch >= self.main_epochs

    @property
    def target(self) -> float | None:
        return None if self.controller is None else self.controller.target

    def lambda_at(self, epoch: int) -> float:
        """λ of ``epoch``: the list entry of its block of ``lambda_every`` epochs, the last entry after the list."""
        if not self.enabled:
            return 0.0
        if self.controller is not None:
            return self.controller.lam
        if self.schedule:
            return self.schedule[min(epoch // self.every, len(self.schedule) - 1)]
        return self.base_lambda

    @property
    def pattern_frozen(self) -> bool:
        """The zero groups are held at zero and the prox is off (fine-tuning, or a reached target)."""
        return self.finetuning or (self.controller is not None and self.controller.frozen)

    def on_epoch_start(self, epoch: int) -> float:
        """Set λ and the proximal switch for ``epoch`` (off once the pattern is frozen); returns λ."""
        self.epoch = epoch
        self.lam = self.lambda_at(epoch)
        if self.enabled:
            optim.set_lambda(self.optimizer, self.lam)
            optim.set_prox(self.optimizer, epoch >= self.threshold and not self.pattern_frozen)
            if self.pattern_frozen and self.held is None:
                self.held = _zero_groups(self.optimizer)
        return self.lam

    def after_step(self) -> None:
        """After each optimizer step: hold the frozen pattern, or let the controller read the sparsity."""
        self.steps += 1
        if self.held is not None:
            _hold_at_zero(self.optimizer, self.held)
        elif self.controller is not None and self.epoch >= self.threshold and self.steps % self.update_every == 0:
            self.lam = self.controller.update(sparsity.summary(self.backbone)["group_sparsity"])
            optim.set_lambda(self.optimizer, self.lam)

    @property
    def seeking_target(self) -> bool:
        """Target mode before the pattern is frozen: early stopping must not end the trial yet."""
        return self.controller is not None and self.freeze and not self.controller.frozen

    def on_epoch_end(self, epoch: int) -> bool:
        """Before epoch ``target_epoch`` (1-based), freeze λ and hold the target's weakest groups at zero.

        Freezing one epoch ahead lets the zero groups the pattern does not hold (the controller
        may overshoot) revive at their next step, so the target epoch ends at the target.
        Returns True when it froze the pattern now (the trainer then restarts early stopping).
        """
        controller = self.controller
        if controller is None or not self.freeze or controller.frozen or epoch + 1 < max(1, self.target_epoch - 1):
            return False
        controller.frozen = True
        self.held = _target_pattern(self.optimizer, controller.target)
        _hold_at_zero(self.optimizer, self.held)
        optim.set_prox(self.optimizer, False)
        return True

    def loss_term(self) -> Tensor | None:
        """The study's penalty term to add to the loss, or None (``penalty_in_loss`` off)."""
        return optim.study_penalty_tensor(self.optimizer) if self.in_loss else None

    def measures(self, backbone: nn.Module) -> dict[str, float]:
        """The backbone's sparsity (and, under group sparsity, the penalty's value and the target) after an epoch."""
        summary = sparsity.summary(backbone)
        if self.enabled:
            with torch.no_grad():
                summary["penalty"] = float(optim.penalty_tensor(self.optimizer))
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lam, "steps": self.steps,
            "controller": None if self.controller is None else self.controller.state_dict(),
            "held": self.held,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam, self.steps, self.held = float(state["lambda"]), int(state["steps"]), state["held"]
        if self.controller is not None and state["controller"] is not None:
            self.controller.load_state_dict(state["controller"])


def _zero_groups(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Per penalised weight, the indices of its input-channel groups that are zero now (one host sync each, once)."""
    held = []
    for group in optim.penalised(optimizer):
        for weight in group["params"]:
            nonzero = weight.detach().transpose(0, 1).reshape(weight.shape[1], -1).ne(0).any(1)
            held.append((~nonzero).nonzero().flatten())
    return held


@torch.no_grad()
def _target_pattern(optimizer: torch.optim.Optimizer, target: float) -> list[Tensor]:
    """Per penalised weight, the indices of the groups to hold at zero: the ``round(target · n)`` groups
    of smallest ‖w_g‖/λ_g over all n groups (the prox's own scale; zero groups come first)."""
    weights, scores = [], []
    for group in optim.penalised(optimizer):
        for weight in group["params"]:
            norms = torch.linalg.vector_norm(weight.detach().transpose(0, 1).reshape(weight.shape[1], -1).double(), dim=1)
            scale = math.sqrt(weight[:, 0].numel()) if group["reweight"] else 1.0
            weights.append(weight)
            scores.append(norms / scale)
    sizes = [score.numel() for score in scores]
    flat = torch.cat(scores)
    count = round(target * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, stable=True)[:count]] = True  # one sort, once per trial
    return [part.nonzero().flatten() for part in chosen.split(sizes)]


@torch.no_grad()
def _hold_at_zero(optimizer: torch.optim.Optimizer, held: list[Tensor]) -> None:
    """Reset the held groups to exactly zero after a step (index_fill_: no host sync)."""
    weights = [weight for group in optim.penalised(optimizer) for weight in group["params"]]
    for weight, indices in zip(weights, held):
        if indices.numel():
            weight.index_fill_(1, indices, 0.0)
