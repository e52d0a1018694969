"""Datasets of the study: NYU-v2 (NYUD_MT and MTAN layouts, or a synthetic stand-in) and CelebAMask-HQ.

``describe(cfg)`` says what the configured data is, ``check(cfg)`` checks it without decoding
(what a launcher runs before submitting jobs), ``build(cfg)`` returns its train / val / test
datasets of samples ``{"image": 3xHxW float, "targets": {task: tensor}}`` (docs/contracts.md),
``loader(...)`` wraps one in a reproducible DataLoader. They load on first use, so that the
torch-free modules of this package (``data.celeba_format``) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DatasetInfo", "Splits", "build", "check", "data_key", "describe", "loader"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("data.datasets"), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
