"""Optimizers with a proximal group-sparsity step, their parameter groups and sparsity measures.

``build(spec, model, extra=...)`` returns the one optimizer of a model; the sparsity schedule
turns λ and the proximal step with ``set_lambda`` / ``set_prox`` and reads ``penalty_tensor``
(a differentiable 0-d tensor). Measures of the resulting sparsity are in :mod:`optim.sparsity`.
"""

from optim import sparsity
from optim.build import build, penalised, penalty_tensor, set_lambda, set_prox, study_penalty_tensor
from optim.groups import param_groups
from optim.prox import prox_group_l1_l2_, prox_group_mcp_
from optim.prox_adam import ProxAdam

__all__ = [
    "ProxAdam",
    "build",
    "param_groups",
    "penalised",
    "penalty_tensor",
    "prox_group_l1_l2_",
    "prox_group_mcp_",
    "set_lambda",
    "set_prox",
    "sparsity",
    "study_penalty_tensor",
]
