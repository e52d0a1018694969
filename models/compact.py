"""Physical removal of what zero input-channel groups make dead: a smaller model, same eval outputs.

:func:`compact` turns a sparse :class:`~models.multitask.MultiTaskModel` (ResNet-D or
torchvision backbone, ASPP and attribute heads) into a :class:`CompactModel` whose eval-mode
outputs equal the sparse model's up to float rounding, with fewer parameters, FLOPs and
activations. The compact model is for inference only: every BatchNorm layer (its running
statistics, with the folded constants in the backbone) is folded into the convolution before it,
weights and bias, one op less per layer.

What is removed, tensor by tensor (every conv is followed by BatchNorm in the backbone):

- *Constants first.* A filter whose weights are zero on every input that varies outputs a
  per-channel constant: BatchNorm's value at the folded input, through ReLU. A constant input
  channel folds into a consumer's BatchNorm (its ``running_mean``) when the arithmetic is
  exact: the consumer has no padding (1x1 convs: shortcuts, Bottleneck ends), or the constant
  is 0. A 3x3 conv with zero padding sees a constant map as non-constant at the borders, so
  there the channel is kept and computed. Head layers get zeros dropped, nothing folded.
- *Then liveness, from the heads back to the image.* A channel is kept only while some consumer
  reads it: a conv whose input group is non-zero (and not folded), or an identity shortcut
  whose output channel is kept. Each head reads only its own channels (an index per head), so
  a head whose input groups are zero shrinks although other heads read those channels; the
  backbone's output keeps their union. Along a residual stream every position has its own
  channel set (identity shortcuts select the next one's), so a channel the heads stopped
  reading leaves the last block while earlier blocks still compute it for their consumers.
- A residual branch whose last conv reads nothing is a per-channel constant, added to the
  shortcut in place of the branch.
- A conv left reading nothing while some of its outputs are still needed (a constant that
  cannot fold) keeps one zeroed input column, so every conv has an input.

Every conv reads its kept inputs through an ``index_select`` when they are a strict subset of
the channels its input tensor carries. The result is described by :attr:`CompactModel.spec`
(plain data: per layer its geometry, channel counts, gather indices and the original channel
ids kept) plus a state_dict; :func:`save` / :func:`load` write and read both with
``torch.load(weights_only=True)``, without pickled classes.

Torch-Pruning (``tp.DependencyGraph``) was evaluated for the channel surgery and is not used.
Its groups express the interior case cleanly (conv1's filter j, bn1's channel j and conv2's
input j are one group), but not the rest of the study's cases: a residual-stream channel forms
one group spanning every block of the stage and every head, so it can be removed only from all
of them at once (no per-head index, no per-position streams; a gather would be a new operation,
which its graph surgery never adds); it removes channels but does not fold the removed
channel's BatchNorm constant into a consumer, nor tell exact folds (1x1) from inexact ones
(zero-padded 3x3 borders); and it cannot replace a fully zero residual branch by a constant
(pruning every channel of a conv leaves an empty layer). The rules above already decide the
interior channels with the same code as the rest, so a second mechanism for that one case
would only add a dependency and a second source of truth.

    python -m models.compact --exp_folder_path runs/demo_synthetic_trial_0 --onnx compact.onnx
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torchvision.models import resnet as tv_resnet

from models.backbones import ResNetBackbone
from models.fast_ops import StemMaxPool2d, graph_capture, live_taps
from models.heads import ClassificationHead, DenseHead, build_head
from models.multitask import MultiTaskModel
from optim.groups import head_input_layers
from utils import checkpoint as ckpt
from utils.errors import DataError

#: Marks a compact-model file; ``VERSION`` changes when the layout of the spec or the state_dict does.
FORMAT = "gsmtl-compact"
VERSION = 3

Spec = dict[str, Any]


# --------------------------------------------------------------------------- compact modules
class ConvUnit(nn.Module):
    """Gather the kept input channels (``index``; all when None), conv with its BatchNorm folded in, optional ReLU.

    A dilated conv adds its bias after the conv: torch's dilated conv with a bias is 1.6× slower
    than without (60 → 64 channels of 12×16, dilation 2, channels-last: 137 µs against 85 µs).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.dilated = _bias_separate(spec)
        self.conv = nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), stride=tuple(spec["stride"]),
                              padding=tuple(spec["padding"]), dilation=tuple(spec["dilation"]), bias=not self.dilated)
        self.bias = nn.Parameter(torch.zeros(spec["out"])) if self.dilated else None
        self.relu = bool(spec["relu"])
        self.register_buffer("index", _index(spec["index"]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, trim=not graph_capture())

    def run(self, x: Tensor, *, trim: bool) -> Tensor:
        """The forward; ``trim`` leaves out the taps of a dilated conv that read only padding (exact;
        :func:`~models.fast_ops.live_taps`), which traced and exported graphs must not."""
        if self.index is not None:
            x = x.index_select(1, self.index)
        conv = self.conv
        taps = live_taps(conv, x.shape[-2:]) if trim and self.dilated else None
        weight, padding, dilation = (conv.weight, conv.padding, conv.dilation) if taps is None else taps
        x = F.conv2d(x, weight, conv.bias, conv.stride, padding, dilation)
        if self.bias is not None:
            x = x.add_(self.bias[:, None, None])
        return x.relu_() if self.relu else x


def _bias_separate(spec: Mapping[str, Any]) -> bool:
    return any(d > 1 for d in spec["dilation"])


class CompactBlock(nn.Module):
    """``relu(branch(x) + shortcut(x))``; a constant branch is a buffer, an identity shortcut a gather."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        branch = spec["branch"]
        self.branch = None if branch is None else nn.Sequential(*(ConvUnit(unit) for unit in branch))
        self.shortcut = None if spec["shortcut"] is None else ConvUnit(spec["shortcut"])
        self.register_buffer("shortcut_index", _index(spec["shortcut_index"]), persistent=False)
        self.register_buffer("constant", torch.zeros(len(spec["kept"])) if branch is None else None)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, trim=not graph_capture())

    def run(self, x: Tensor, *, trim: bool) -> Tensor:
        """The forward, its units called through :meth:`ConvUnit.run`."""
        if self.shortcut is not None:
            residual = self.shortcut.run(x, trim=trim)
        else:
            residual = x if self.shortcut_index is None else x.index_select(1, self.shortcut_index)
        if self.branch is None:
            return (residual + self.constant[:, None, None]).relu_()
        out = x
        for unit in self.branch:
            out = unit.run(out, trim=trim)
        out += residual
        return out.relu_()


class CompactBackbone(ResNetBackbone):
    """A :class:`~models.backbones.ResNetBackbone` of compact conv units and blocks, built from its spec.

    Its forward calls the units' and blocks' :meth:`run` methods directly, not through
    ``nn.Module.__call__``, whose machinery around some 60 small modules cost 5 % of the demo
    compact model's batch-1 time (one thread, 40 alternating rounds). Hooks on modules inside
    the backbone therefore do not fire; hooks on the backbone itself do.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        stem: list[nn.Module] = [ConvUnit(unit) for unit in spec["stem"]]
        if spec["pool"] is not None:
            stem.append(StemMaxPool2d(**spec["pool"]))
        stages = [nn.Sequential(*(CompactBlock(block) for block in stage)) for stage in spec["stages"]]
        super().__init__(nn.Sequential(*stem), stages, int(spec["out_channels"]))

    def forward(self, images: Tensor) -> Tensor:
        trim = not graph_capture()
        x = images
        for layer in self.stem:
            x = layer.run(x, trim=trim) if isinstance(layer, ConvUnit) else layer(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block.run(x, trim=trim)
        return x


class GatheredHead(nn.Module):
    """A task head reading only its own backbone channels (``index`` into the compact features)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        head = build_head(spec["kind"], spec["in_channels"], spec["out_channels"], head_channels=spec["head_channels"])
        self.head = _fold_batchnorm(head)  # the structure; the values come with the state_dict
        self.register_buffer("index", _index(spec["index"]), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features if self.index is None else features.index_select(1, self.index))


def _fold_batchnorm(head: nn.Module) -> nn.Module:
    """``head`` with each BatchNorm2d that directly follows a Conv2d in a Sequential folded into it (in place).

    The conv takes the BatchNorm's eval-mode affine map (running statistics; computed in float64)
    into its weight and a bias; the BatchNorm becomes an ``nn.Identity``, so its state keys go.
    """
    for sequence in [m for m in head.modules() if isinstance(m, nn.Sequential)]:
        for (_, conv), (name, bn) in pairwise(list(sequence.named_children())):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                dtype = conv.weight.dtype
                weight, bias = fuse_conv_bn_weights(
                    conv.weight.detach().double(), None if conv.bias is None else conv.bias.detach().double(),
                    bn.running_mean.double(), bn.running_var.double(), bn.eps, bn.weight.detach().double(),
                    bn.bias.detach().double())
                conv.weight, conv.bias = nn.Parameter(weight.to(dtype)), nn.Parameter(bias.to(dtype))
                setattr(sequence, name, nn.Identity())
    return head


class CompactModel(MultiTaskModel):
    """The compact model of ``spec``: ``forward(images, tasks=None)`` as :class:`MultiTaskModel`'s.

    Built in eval mode, every BatchNorm folded into its conv. ``spec`` is plain data; the weights
    come from ``load_state_dict``. On the CPU the memory layout (channels-last or NCHW, weights
    and activations) is chosen by timing both on the first batch of each shape, as
    ``cudnn.benchmark`` chooses its algorithms: which of torch's CPU kernels is faster depends on
    the channel counts sparsity left (one thread, batch 1: a 4 → 8 channel 3×3 conv of 24×32 takes
    54 µs channels-last and 17 µs NCHW, a 64-channel 3×3 dilated 4 of 12×16 245 µs and 324 µs),
    so no fixed layout suits every compact model. Outputs are the same values in either layout
    (to float rounding).

    ``tune_layout=False``, other devices, graph capture (tracing, compile, export) and dispatch
    modes (FLOP and memory counting) keep the current layout, channels-last at first. The choice
    is kept per input shape, dtype, CPU autocast dtype, thread count and task list. A change of
    layout rewrites the weights: moving between shapes whose choices differ converts them (an
    evaluation whose last batch is smaller: twice per pass), and a model shared by threads that
    run new shapes concurrently needs ``tune_layout=False``.
    """

    def __init__(self, spec: Spec, *, tune_layout: bool = True) -> None:
        heads = nn.ModuleDict({task: GatheredHead(head) for task, head in spec["heads"].items()})
        super().__init__(CompactBackbone(spec["backbone"]), heads)
        self.spec = spec
        self.tune_layout = tune_layout
        self.layout = torch.channels_last
        self._layouts: dict[tuple[Any, ...], torch.memory_format] = {}
        self.to(memory_format=self.layout)
        self.requires_grad_(False)  # inference only: no autograd graph, usable from any grad mode
        self.eval()

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        if images.dim() == 4 and not graph_capture():
            if self.tune_layout and images.device.type == "cpu" and not is_in_torch_dispatch_mode():
                autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
                key = (tuple(images.shape), images.dtype, autocast, torch.get_num_threads(), None if tasks is None else tuple(tasks))
                if key not in self._layouts:
                    self._layouts[key] = self._fastest_layout(images, tasks)
                self._use(self._layouts[key])
            images = images.contiguous(memory_format=self.layout)
        return super().forward(images, tasks)

    @torch.no_grad()
    def _fastest_layout(self, images: Tensor, tasks: Sequence[str] | None) -> torch.memory_format:
        """The layout whose best of a few timed forwards of ``images`` is shorter (each layout warmed up first).

        Rounds alternate the layouts so a slow spell of the machine hits both; a forward longer
        than ``TUNE_LONG_S`` is timed once per layout (the choice then costs four forwards).
        """
        best = dict.fromkeys(LAYOUTS, float("inf"))
        for round_ in range(TUNE_ROUNDS):
            for layout in LAYOUTS:
                self._use(layout)
                x = images.contiguous(memory_format=layout)
                super().forward(x, tasks)  # the first run in a layout allocates
                start = _clock()
                super().forward(x, tasks)
                best[layout] = min(best[layout], _clock() - start)
            if round_ == 0 and min(best.values()) > TUNE_LONG_S:
                break
        return min(LAYOUTS, key=best.__getitem__)

    def _use(self, layout: torch.memory_format) -> None:
        """Weights in ``layout``, inference tensors only if they were (a forward under inference mode keeps them usable outside)."""
        if layout != self.layout:
            with torch.inference_mode(next(self.parameters()).is_inference()), torch.no_grad():
                self.to(memory_format=layout)
            self.layout = layout


#: The layouts a compact model chooses between on the CPU, the default first.
LAYOUTS = (torch.channels_last, torch.contiguous_format)
#: Timed forwards per layout when choosing; one when a forward takes longer than ``TUNE_LONG_S``.
TUNE_ROUNDS = 3
TUNE_LONG_S = 0.05
_clock = time.perf_counter


def _index(values: Sequence[int] | None) -> Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.long)


# --------------------------------------------------------------------------- the sparse model
@dataclass(frozen=True)
class _Layer:
    """A conv of the sparse model with its BatchNorm (eval statistics) and whether ReLU follows."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    relu: bool

    def __post_init__(self) -> None:
        if self.conv.groups != 1 or self.conv.padding_mode != "zeros" or self.conv.bias is not None:
            raise TypeError(f"{self.name}: compact handles bias-free, ungrouped, zero-padded convs")
        if not (self.bn.affine and self.bn.track_running_stats):
            raise TypeError(f"{self.name}: compact needs BatchNorm with affine parameters and running statistics")

    @property
    def foldable(self) -> bool:
        """Without padding, a constant input map gives a constant output map: exact to fold."""
        return all(p == 0 for p in self.conv.padding)

    def constants(self, use: _Use) -> Tensor:
        """Output constants after BatchNorm (and ReLU); NaN where the output varies."""
        bn = self.bn
        value = (use.shift - bn.running_mean.double()) * (bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt())
        value = value + bn.bias.double()
        if self.relu:
            value = value.clamp_min(0)
        varies = (use.touch & ~use.absorbed).any(1)
        return torch.where(varies, torch.nan, value)


@dataclass(frozen=True)
class _Block:
    branch: list[_Layer]
    shortcut: _Layer | None


class _Use:
    """A weight applied to a tensor with known per-channel constants (NaN where a channel varies).

    ``touch[i, j]``: filter i has a non-zero weight on input j. ``absorbed[j]``: input j needs no
    tensor, its contribution being zero or a constant folded into ``shift`` (before BatchNorm).
    """

    def __init__(self, weight: Tensor, constants: Tensor, *, fold: bool) -> None:
        w = weight.detach().double().cpu()
        known = ~constants.isnan()
        self.touch = w.flatten(2).ne(0).any(2) if w.ndim > 2 else w.ne(0)
        self.absorbed = known & ((constants == 0) | fold)
        folded = torch.where(self.absorbed, constants, 0.0)
        self.shift = (w.flatten(2).sum(2) if w.ndim > 2 else w) @ folded

    def reads(self, outputs: Tensor) -> Tensor:
        """Inputs that the filters ``outputs`` (a mask) must read as tensors."""
        return (self.touch[outputs] & ~self.absorbed).any(0)


def _layer(name: str, conv: nn.Module, bn: nn.Module, relu: bool) -> _Layer:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"{name}: expected Conv2d then BatchNorm2d, got {type(conv).__name__}, {type(bn).__name__}")
    return _Layer(name, conv, bn, relu)


def _stem(stem: nn.Module) -> tuple[list[_Layer], nn.MaxPool2d | None]:
    """The stem as conv-BN(-ReLU) layers and an optional final max-pool."""
    modules = list(stem.named_children())
    layers: list[_Layer] = []
    i = 0
    while i < len(modules) and isinstance(modules[i][1], nn.Conv2d):
        relu = i + 2 < len(modules) and isinstance(modules[i + 2][1], nn.ReLU)
        layers.append(_layer(f"backbone.stem.{modules[i][0]}", modules[i][1], modules[i + 1][1], relu))
        i += 3 if relu else 2
    rest = [module for _, module in modules[i:]]
    if not layers or len(rest) > 1 or (rest and not isinstance(rest[0], nn.MaxPool2d)):
        raise TypeError("the stem must be conv-BN-ReLU layers and at most one final MaxPool2d")
    return layers, (rest[0] if rest else None)


def _block(name: str, block: nn.Module) -> _Block:
    if isinstance(block, tv_resnet.Bottleneck):
        count = 3
    elif isinstance(block, tv_resnet.BasicBlock):
        count = 2
    else:
        raise TypeError(f"{name}: expected a torchvision BasicBlock or Bottleneck, got {type(block).__name__}")
    branch = [_layer(f"{name}.conv{i}", getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), relu=i < count)
              for i in range(1, count + 1)]
    shortcut = None
    if block.downsample is not None:
        conv, bn = list(block.downsample.children())
        shortcut = _layer(f"{name}.downsample", conv, bn, relu=False)
    return _Block(branch, shortcut)


def _head_kind(task: str, head: nn.Module) -> dict[str, Any]:
    """What :func:`models.heads.build_head` needs to rebuild ``head`` (besides its input channels)."""
    if isinstance(head, DenseHead):
        return {"kind": "dense", "out_channels": head[-1].out_channels, "head_channels": head[1].in_channels}
    if isinstance(head, ClassificationHead):
        return {"kind": "classification", "out_channels": head.classifier[-1].out_features,
                "head_channels": head.features[0].out_channels}
    raise TypeError(f"head '{task}': compact handles DenseHead and ClassificationHead, got {type(head).__name__}")


# --------------------------------------------------------------------------- planning
@dataclass
class _Unit:
    """A layer in the compact model: the filters it keeps and the inputs it reads (masks)."""

    layer: _Layer
    use: _Use
    outputs: Tensor
    reads: Tensor


@dataclass
class _BlockPlan:
    outputs: Tensor
    branch: list[_Unit] | None
    constant: Tensor | None
    shortcut: _Unit | None
    inputs: Tensor


def _at_least_one(mask: Tensor, prefer: Tensor | None = None) -> Tensor:
    """``mask``, or one channel (of ``prefer`` if any) when it is empty: every conv keeps an input."""
    if mask.any():
        return mask
    one = torch.zeros_like(mask)
    one[int(prefer.nonzero()[0]) if prefer is not None and prefer.any() else 0] = True
    return one


def _chain(layers: Sequence[_Layer], constants: Tensor) -> list[_Use]:
    uses = []
    for layer in layers:
        uses.append(_Use(layer.conv.weight, constants, fold=layer.foldable))
        constants = layer.constants(uses[-1])
    return uses


def _chain_back(layers: Sequence[_Layer], uses: Sequence[_Use], outputs: Tensor) -> list[_Unit]:
    """Units of a conv chain from the needed outputs of its last layer; the first unit's reads may be empty."""
    units = []
    for i in reversed(range(len(layers))):
        reads = uses[i].reads(outputs)
        if i > 0:
            reads = _at_least_one(reads)
        units.append(_Unit(layers[i], uses[i], outputs, reads))
        outputs = reads
    return units[::-1]


def _plan_block(block: _Block, uses: list[_Use], shortcut: _Use | None, outputs: Tensor) -> _BlockPlan:
    """Which channels a block keeps, reads and folds, given the channels of its output that are needed."""
    last = uses[-1]
    units = None if not last.reads(outputs).any() else _chain_back(block.branch, uses, outputs)
    constant = None
    if units is None:
        constant = block.branch[-1].constants(last)[outputs]
    unit = None if shortcut is None else _Unit(block.shortcut, shortcut, outputs, shortcut.reads(outputs))
    through = outputs if unit is None else unit.reads
    if units is not None:
        units[0].reads = _at_least_one(units[0].reads, prefer=through)
        through = units[0].reads | through
    if unit is not None:
        unit.reads = _at_least_one(unit.reads, prefer=through)
        through = unit.reads | through
    return _BlockPlan(outputs, units, constant, unit, through)


def _positions(reads: Tensor, available: Tensor) -> list[int] | None:
    """Where the channels ``reads`` sit among ``available`` (masks); None when they are all of it."""
    if torch.equal(reads, available):
        return None
    if (reads & ~available).any():
        raise AssertionError("a layer reads a channel its input does not carry")
    return torch.cumsum(available.long(), 0)[reads].sub(1).tolist()


def _kept(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _unit_spec(unit: _Unit, available: Tensor, prefix: str, state: dict[str, Tensor]) -> dict[str, Any]:
    """Spec of one compact conv unit; its tensors go into ``state`` under ``prefix``."""
    conv, bn = unit.layer.conv, unit.layer.bn
    outputs, reads = _kept(unit.outputs), _kept(unit.reads)
    weight = conv.weight.detach()[outputs][:, reads].double()
    weight[:, unit.use.absorbed[reads].to(weight.device)] = 0  # a folded column kept as an input counts once
    # BatchNorm (eval statistics, the folded constants' shift included) into the conv, in float64:
    # y = scale · (conv(x) + shift − mean) + β, so the weights take the scale and the bias the rest.
    index = torch.tensor(outputs, dtype=torch.long, device=weight.device)
    scale = bn.weight.detach().double()[index] / (bn.running_var.double()[index] + bn.eps).sqrt()
    mean = bn.running_mean.double()[index] - unit.use.shift[outputs].to(weight.device)
    spec = {
        "name": unit.layer.name, "in": len(reads), "out": len(outputs), "kernel": list(conv.kernel_size),
        "stride": list(conv.stride), "padding": list(conv.padding), "dilation": list(conv.dilation),
        "relu": unit.layer.relu, "index": _positions(unit.reads, available), "kept": outputs,
    }
    state.update({
        f"{prefix}.conv.weight": (weight * scale[:, None, None, None]).to(conv.weight.dtype),
        f"{prefix}.{'bias' if _bias_separate(spec) else 'conv.bias'}": (bn.bias.detach().double()[index] - scale * mean).to(conv.weight.dtype),
    })
    return spec


def _plan(model: nn.Module) -> tuple[Spec, dict[str, Tensor]]:
    """The compact model's spec and state_dict for a sparse model in eval mode."""
    backbone = model.backbone
    stem_layers, pool = _stem(backbone.stem)
    stages = [[_block(f"backbone.layer{i}.{j}", block) for j, block in enumerate(getattr(backbone, f"layer{i}"))]
              for i in range(1, 5)]

    # Forward: which channels are per-channel constants (NaN: varies), and what each layer folds.
    image = torch.full((stem_layers[0].conv.in_channels,), torch.nan, dtype=torch.float64)
    stem_uses = _chain(stem_layers, image)
    constants = stem_layers[-1].constants(stem_uses[-1])  # max-pooling keeps a constant map constant
    block_uses: list[list[tuple[list[_Use], _Use | None]]] = []
    for stage in stages:
        block_uses.append([])
        for block in stage:
            uses = _chain(block.branch, constants)
            shortcut = None if block.shortcut is None else _Use(block.shortcut.conv.weight, constants, fold=block.shortcut.foldable)
            residual = constants if shortcut is None else block.shortcut.constants(shortcut)
            constants = (block.branch[-1].constants(uses[-1]) + residual).clamp_min(0)
            block_uses[-1].append((uses, shortcut))

    # Backward: each head's channels, then what every layer must compute for its consumers.
    readers = {task: head_input_layers(head, backbone.out_channels) for task, head in model.heads.items()}
    head_reads = {}
    for task, layers in readers.items():
        reads = torch.zeros(backbone.out_channels, dtype=torch.bool)
        for _, layer in layers:
            use = _Use(layer.weight, constants, fold=False)
            reads |= use.reads(torch.ones(use.touch.shape[0], dtype=torch.bool))
        head_reads[task] = reads
    features = torch.zeros(backbone.out_channels, dtype=torch.bool)
    for reads in head_reads.values():
        features |= reads
    for task, reads in head_reads.items():
        head_reads[task] = _at_least_one(reads, prefer=features)
        features |= head_reads[task]
    needed = features
    plans: list[list[_BlockPlan]] = [[] for _ in stages]
    for i in reversed(range(len(stages))):
        for block, (uses, shortcut) in reversed(list(zip(stages[i], block_uses[i]))):
            plans[i].insert(0, _plan_block(block, uses, shortcut, needed))
            needed = plans[i][0].inputs
    stem_units = _chain_back(stem_layers, stem_uses, needed)
    stem_units[0].reads = _at_least_one(stem_units[0].reads)

    # Specs and tensors, in forward order.
    state: dict[str, Tensor] = {}
    available = torch.ones_like(image, dtype=torch.bool)
    stem_spec = []
    for i, unit in enumerate(stem_units):
        stem_spec.append(_unit_spec(unit, available, f"backbone.stem.{i}", state))
        available = unit.outputs
    stage_specs = []
    for i, stage in enumerate(plans, start=1):
        stage_specs.append([])
        for j, plan in enumerate(stage):
            prefix = f"backbone.layer{i}.{j}"
            branch = None
            if plan.branch is not None:
                branch = [_unit_spec(unit, available if k == 0 else plan.branch[k - 1].outputs, f"{prefix}.branch.{k}", state)
                          for k, unit in enumerate(plan.branch)]
            else:
                state[f"{prefix}.constant"] = plan.constant.to(stem_layers[0].conv.weight.dtype)
            shortcut = None if plan.shortcut is None else _unit_spec(plan.shortcut, available, f"{prefix}.shortcut", state)
            stage_specs[-1].append({
                "branch": branch, "shortcut": shortcut, "kept": _kept(plan.outputs),
                "shortcut_index": None if plan.shortcut is not None else _positions(plan.outputs, available),
            })
            available = plan.outputs
    pool_spec = None if pool is None else {
        "kernel_size": pool.kernel_size, "stride": pool.stride, "padding": pool.padding,
        "dilation": pool.dilation, "ceil_mode": pool.ceil_mode,
    }
    heads_spec = {}
    for task, head in model.heads.items():
        reads = head_reads[task]
        gathered = copy.deepcopy(head).eval()
        for name, layer in readers[task]:
            gathered.get_submodule(name).weight = nn.Parameter(layer.weight.detach()[:, _kept(reads)].clone())
        state.update({f"heads.{task}.head.{key}": value for key, value in _fold_batchnorm(gathered).state_dict().items()})
        heads_spec[task] = {**_head_kind(task, head), "in_channels": int(reads.sum()), "reads": _kept(reads),
                            "index": _positions(reads, features)}
    spec = {
        "backbone": {"stem": stem_spec, "pool": pool_spec, "stages": stage_specs, "out_channels": int(features.sum()),
                     "kept": _kept(features)},
        "heads": heads_spec,
    }
    return spec, state


# --------------------------------------------------------------------------- public API
@torch.no_grad()
def compact(model: nn.Module) -> CompactModel:
    """The compact model of a sparse multi-task model (eval-mode semantics), on its device and dtype.

    ``model`` has ``backbone`` (stem, ``layer1`` … ``layer4`` of torchvision BasicBlock /
    Bottleneck blocks, ``out_channels``) and ``heads`` (DenseHead / ClassificationHead); it is
    not modified.
    """
    spec, state = _plan(model)
    reference = next(model.parameters())
    result = CompactModel(spec).to(device=reference.device, dtype=reference.dtype)
    result.load_state_dict(state)
    return result


def save(model: CompactModel, path: str | Path) -> Path:
    """Write ``model`` atomically as plain data (its spec) and tensors (its state_dict, on the CPU)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return ckpt.save({"format": FORMAT, "version": VERSION, "spec": model.spec, "state_dict": state}, path)


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> CompactModel:
    """The compact model saved at ``path`` (``torch.load(weights_only=True)``), in eval mode."""
    stored = ckpt.load(path, map_location=map_location)
    if stored.get("format") != FORMAT or stored.get("version") != VERSION:
        raise DataError(f"'{path}' is not a compact model file (format {FORMAT!r} version {VERSION}); "
                        "write one with python -m models.compact")
    model = CompactModel(stored["spec"])
    model.load_state_dict(stored["state_dict"])
    return model.to(map_location)


if __name__ == "__main__":
    from engine.export import main

    sys.exit(main())
