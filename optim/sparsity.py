"""Sparsity measures of conv weights and the value of the group penalty (REFERENCE §7).

All fractions are in [0, 1]. Over the 4-D weights ``W[out, in, kh, kw]`` of a module:

- group sparsity: zero input-channel groups ``W[:, j]`` / all groups (what the prox creates);
- filter sparsity: zero output filters ``W[i]`` / all filters (the study's CelebA ``gp_spar``;
  a filter is zero only when its whole layer is, since the prox zeroes input channels);
- parameter sparsity: weights in zero groups / all conv weights; ``nonzero_params`` counts the
  weights outside zero groups.

Overall values are ratios of the summed counts, not means of the per-layer fractions.

Per task head (a model with ``backbone.out_channels`` and ``heads``): its input layers are
those that read the backbone's features (:func:`optim.groups.head_input_layers`); a backbone
channel is unread by a head when its group is zero in every one of them, which is what the
``backbone+head_inputs`` scope creates and ``models.compact`` removes from that head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import Tensor, nn

from optim.groups import head_input_layers
from optim.prox import group_size

_COUNTS = ("zero_groups", "total_groups", "zero_filters", "total_filters", "nonzero_params", "total_params")


def conv_weights(module: nn.Module) -> dict[str, Tensor]:
    """The module's 4-D weights by layer name (the parameter name without ``.weight``)."""
    return {name.removesuffix(".weight"): p for name, p in module.named_parameters() if p.ndim == 4}


def layer_table(module: nn.Module) -> pd.DataFrame:
    """One row per conv layer: counts and the three sparsity fractions."""
    return _table(conv_weights(module))


def _table(weights: dict[str, Tensor]) -> pd.DataFrame:
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


def head_input_sparsity(model: nn.Module) -> dict[str, float]:
    """Per task: the fraction of the backbone's channels that its head no longer reads."""
    channels = model.backbone.out_channels
    result = {}
    for task, head in model.heads.items():
        read = torch.zeros(channels, dtype=torch.bool)
        for _, layer in head_input_layers(head, channels):
            weight = layer.weight.detach()
            read |= (weight.flatten(2) if weight.ndim > 2 else weight[..., None]).ne(0).any(2).any(0).cpu()
        result[task] = 1 - float(read.sum()) / channels
    return result


def task_layer_table(model: nn.Module) -> pd.DataFrame:
    """:func:`layer_table` rows of the backbone (``task`` "shared") and of every head's input layers.

    Layer names are the model's (``backbone.…``, ``heads.<task>.…``); the head rows count the
    input groups of their task's head, so their group sparsity is the head-input sparsity per layer.
    """
    channels = model.backbone.out_channels
    parts = [_with_task(layer_table(model.backbone), "shared", "backbone.")]
    for task, head in model.heads.items():
        layers = head_input_layers(head, channels)
        weights = {name: layer.weight for name, layer in layers}
        parts.append(_with_task(_table(weights), task, f"heads.{task}."))
    return pd.concat(parts, ignore_index=True)


def _with_task(table: pd.DataFrame, task: str, prefix: str) -> pd.DataFrame:
    table["layer"] = prefix + table["layer"]
    table.insert(0, "task", task)
    return table


def _counts(weights: Iterable[Tensor]) -> list[list[int]]:
    """Per layer: zero/total groups, zero/total filters, params outside zero groups/total."""
    weights = list(weights)
    if not weights:
        raise ValueError("the module has no 4-D (conv) weights to measure")
    zeros = []
    for w in weights:
        nonzero = w.detach() != 0
        zeros.append(torch.stack([(~nonzero.any(0).reshape(w.shape[1], -1).any(1)).sum(), (~nonzero.reshape(w.shape[0], -1).any(1)).sum()]))
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
