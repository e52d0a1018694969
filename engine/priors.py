"""Start every head at the best constant prediction of its loss on the training targets.

The same idea as the prior-probability bias of Lin et al., *Focal Loss for Dense Object
Detection* (ICCV 2017), applied to each task: depth starts at the median depth instead of 0 m.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Dataset

from models.multitask import MultiTaskModel
from tasks.base import Task


@torch.no_grad()
def init_output_biases(model: MultiTaskModel, tasks: Mapping[str, Task], dataset: Dataset, *, max_samples: int = 64) -> None:
    """Set each head's output bias from up to ``max_samples`` evenly spaced training samples."""
    count = min(max_samples, len(dataset))
    if count == 0:
        return
    indices = torch.linspace(0, len(dataset) - 1, steps=count).round().long().unique().tolist()
    samples = [dataset[i]["targets"] for i in indices]
    for name, task in tasks.items():
        prior = task.output_prior(torch.stack([sample[name] for sample in samples]))
        if prior is not None:
            model.output_layer(name).bias.copy_(prior.to(model.output_layer(name).bias))
