"""Where and with which random state a trial runs."""

from __future__ import annotations

import random

import numpy as np
import torch

from utils.config import ExperimentConfig
from utils.errors import ConfigError


def resolve_device(cfg: ExperimentConfig) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without one is a config error."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed every generator a trial draws from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
