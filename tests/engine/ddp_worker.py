"""Run main_multi_trials.py under torchrun and keep each rank's final weights (for tests/engine/test_distributed.py).

    torchrun --nproc_per_node 2 tests/engine/ddp_worker.py OUT_DIR --config_exp ... [--set ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import main_multi_trials
from engine.trainer import Trainer

out = Path(sys.argv[1])
fit = Trainer.fit


def fit_and_keep(self: Trainer) -> None:
    fit(self)
    weights = self.model.state_dict() | {f"weighting.{k}": v for k, v in self.trial.weighting.state_dict().items()}
    torch.save(weights, out / f"rank{os.environ['RANK']}.pt")


Trainer.fit = fit_and_keep
sys.exit(main_multi_trials.main(sys.argv[2:]))
