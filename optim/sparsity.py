"""Sparsity measures of conv weights and the value of the group penalty (REFERENCE §7).

All fractions are in [0, 1]. Over the 4-D weights ``W[out, in, kh, kw]`` of a module:

- group sparsity: zero input-channel groups ``W[:, j]`` / all groups (what the prox creates);
- filter sparsity: zero output filters ``W[i]`` / all filters (the study's CelebA ``gp_spar``;
  a filter is zero only when its whole layer is, since the prox zeroes input channels);
- parameter sparsity: weights in zero groups / all conv weights; ``nonzero_params`` counts the
  weights outside zero groups.

Overall values are ratios of the summed counts, not means of the per-layer fractions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import Tensor, nn

from optim.prox import group_size

_COUNTS = ("zero_groups", "total_groups", "zero_filters", "total_filters", "nonzero_params", "total_params")


def conv_weights(module: nn.Module) -> dict[str, Tensor]:
    """The module's 4-D weights by layer name (the parameter name without ``.weight``)."""
    return {name.removesuffix(".weight"): p for name, p in module.named_parameters() if p.ndim == 4}


def layer_table(module: nn.Module) -> pd.DataFrame:
    """One row per conv layer: counts and the three sparsity fractions."""
    weights = conv_weights(module)
    table = pd.DataFrame(_counts(weights.values()), columns=list(_COUNTS))
    table.insert(0, "layer", list(weights))
    table.insert(1, "shape", [tuple(w.shape) for w in weights.values()])
    table["group_sparsity"] = table["zero_groups"] / table["total_groups"]
    table["filter_sparsity"] = table["zero_filters"] / table["total_filters"]
    table["param_sparsity"] = 1 - table["nonzero_params"] / table["total_params"]
    return table


def summary(module: nn.Module) -> dict[str, float]:
    """Overall fractions and counts over every conv weight of ``module`` (one host sync)."""
    rows = _counts(conv_weights(module).values())
    totals = dict(zip(_COUNTS, (float(sum(col)) for col in zip(*rows))))
    return {
        "group_sparsity": totals["zero_groups"] / totals["total_groups"],
        "filter_sparsity": totals["zero_filters"] / totals["total_filters"],
        "param_sparsity": 1 - totals["nonzero_params"] / totals["total_params"],
        **totals,
    }


def _counts(weights: Iterable[Tensor]) -> list[list[int]]:
    """Per layer: zero/total groups, zero/total filters, params outside zero groups/total."""
    weights = list(weights)
    if not weights:
        raise ValueError("the module has no 4-D (conv) weights to measure")
    zeros = []
    for w in weights:
        nonzero = w.detach() != 0
        zeros.append(torch.stack([(~nonzero.any(0).flatten(1).any(1)).sum(), (~nonzero.flatten(1).any(1)).sum()]))
    device = weights[0].device
    rows = []
    for w, (zero_groups, zero_filters) in zip(weights, torch.stack([z.to(device) for z in zeros]).tolist()):
        groups = w.shape[1]
        rows.append([zero_groups, groups, zero_filters, w.shape[0], (groups - zero_groups) * group_size(w), w.numel()])
    return rows


def penalty(
    module_or_tensors: nn.Module | Iterable[Tensor],
    *,
    penalty: str = "l1_l2",
    lam: float,
    gamma: float = 3.0,
    reweight: bool = True,
) -> Tensor:
    """Σ_g λ_g‖w_g‖₂ (``"l1_l2"``) or Σ_g MCP(‖w_g‖₂) (``"group_mcp"``), λ_g = λ√|g| if ``reweight``.

    Groups are the slices ``W[:, j, ...]``; a module contributes its conv weights. The result is
    a 0-d tensor that carries gradients (``float()`` it for logging).
    """
    tensors = list(conv_weights(module_or_tensors).values() if isinstance(module_or_tensors, nn.Module)
                   else module_or_tensors)
    if penalty not in ("l1_l2", "group_mcp"):
        raise ValueError(f"Invalid penalty: {penalty!r} (expected 'l1_l2' or 'group_mcp')")
    if not tensors:
        return torch.zeros(())
    total = torch.zeros((), device=tensors[0].device, dtype=tensors[0].dtype)
    for w in tensors:
        lam_g = lam * math.sqrt(group_size(w)) if reweight else lam
        norms = torch.linalg.vector_norm(w, dim=[d for d in range(w.ndim) if d != 1])  # zero subgradient at 0
        if penalty == "l1_l2":
            total = total + lam_g * norms.sum()
        else:
            flat = gamma * lam_g * lam_g / 2
            total = total + torch.where(norms <= gamma * lam_g, lam_g * norms - norms * norms / (2 * gamma), flat).sum()
    return total
