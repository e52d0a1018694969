"""How task losses combine into the one loss that is back-propagated (config key ``comb_loss``).

``uncertainity`` (the study's spelling) is homoscedastic uncertainty weighting, Kendall, Gal &
Cipolla, CVPR 2018 (arXiv 1705.07115): total = sum_t exp(-s_t) L_t + s_t with s_t = log sigma_t^2
learned (the study started them at 1 and never trained them; learning them is our fix). ``sum`` adds
the losses; ``wt_sum`` uses fixed ``loss_weights`` (default 1/T per task, the study's mean).
Tasks that early-stopped leave the total.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn


class LossWeighting(nn.Module):
    """Combine the losses of the active tasks into one scalar."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.register_buffer("_fixed", torch.tensor([float(w) for w in weights.values()]), persistent=False)
        self.task_names = list(weights)

    def forward(self, losses: Mapping[str, Tensor], active: Collection[str] | None = None) -> Tensor:
        terms = [
            self.weighted(name, loss) for name, loss in losses.items() if active is None or name in active
        ]
        return torch.stack(terms).sum()

    def weighted(self, name: str, loss: Tensor) -> Tensor:
        """The term of one task in the total."""
        return self._fixed[self.task_names.index(name)] * loss


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. 2018: learned log-variances s_t; exp(-s_t) L_t + s_t per task."""

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__({name: 1.0 for name in task_names})
        self.log_vars = nn.Parameter(torch.zeros(len(task_names)))

    def weighted(self, name: str, loss: Tensor) -> Tensor:
        s = self.log_vars[self.task_names.index(name)]
        return torch.exp(-s) * loss + s


def build(comb_loss: str, task_names: Sequence[str], loss_weights: Mapping[str, float] | None = None) -> LossWeighting:
    """The weighting named by ``comb_loss``; one task needs no weighting and gets a plain sum.

    ``wt_sum`` without ``loss_weights`` is the mean of the task losses (1/T each), what the
    study's normalised weights amounted to; with them, each task gets its given weight.
    """
    if comb_loss == "uncertainity" and len(task_names) > 1:
        return UncertaintyWeighting(task_names)
    if comb_loss == "wt_sum":
        if loss_weights is None:
            return LossWeighting({name: 1.0 / len(task_names) for name in task_names})
        return LossWeighting({name: loss_weights[name] for name in task_names})
    return LossWeighting({name: 1.0 for name in task_names})
