"""Optimizers with a proximal group-sparsity step, their parameter groups and sparsity measures.

``build(cfg, model, extra=...)`` returns the one optimizer of a model; the trainer turns λ and
the proximal step with ``set_lambda`` / ``set_prox`` and reads ``penalty_tensor`` (a differentiable 0-d tensor). Measures of
the resulting sparsity are in :mod:`optim.sparsity`.
"""

from optim import sparsity
from optim.build import KINDS, build, penalty_tensor, set_lambda, set_prox
from optim.groups import param_groups
from optim.prox import prox_group_l1_l2_, prox_group_mcp_
from optim.prox_adam import ProxAdam

__all__ = [
    "KINDS",
    "ProxAdam",
    "build",
    "param_groups",
    "penalty_tensor",
    "prox_group_l1_l2_",
    "prox_group_mcp_",
    "set_lambda",
    "set_prox",
    "sparsity",
]
