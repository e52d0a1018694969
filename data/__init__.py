"""Datasets of the study: NYU-v2 (NYUD_MT and MTAN layouts, or a synthetic stand-in) and CelebAMask-HQ.

``describe(cfg)`` says what the configured data is, ``build(cfg)`` returns its train / val / test
datasets of samples ``{"image": 3xHxW float, "targets": {task: tensor}}`` (docs/contracts.md),
``loader(...)`` wraps one in a reproducible DataLoader.
"""

from data.build import DatasetInfo, Splits, build, describe, loader

__all__ = ["DatasetInfo", "Splits", "build", "describe", "loader"]
