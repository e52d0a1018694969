"""Where a trial runs: device, random state, moving batches there and reading results back."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Move one collated batch to ``device`` without blocking the host."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
    targets = {name: value.to(device, non_blocking=True) for name, value in batch["targets"].items()}
    return images, targets


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``amp`` is on (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def read_scalars(values: Mapping[str, Tensor]) -> dict[str, float]:
    """Read a dict of 0-d tensors to floats with one host sync."""
    if not values:
        return {}
    numbers = torch.stack([value.detach().double().reshape(()) for value in values.values()])
    return dict(zip(values, numbers.tolist(), strict=True))
