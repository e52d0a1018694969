"""The study's saved models in this project's layout: ``convert(state_dict, cfg)``.

The study's code (REFERENCE §4, §10) named the backbone ``backbone.*`` with its stem as
``stem1`` and the heads ``decoders.<task>.*`` (a single-task model: ``decoders.*``). Its dense
heads are laid out exactly as :class:`models.heads.DenseHead`; its attribute head names its
layers ``conv``, ``fc1``, ``fc2`` and ends in a sigmoid, whose input is our logit.

Its NYU segmentation head has one output more than there are classes: 41. The study's loader
read the label png (0 = void, 1..40) and subtracted 1, so void became 255 (ignored) and png
class k trained output k − 1: outputs 0..39 are the 40 classes, in this project's order, and
output 40 is never a target. That unused last output is dropped. (Dropping output 0 instead
would shift every class by one.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from utils.config import ExperimentConfig
from utils.errors import DataError

#: Study name -> ours, for the layers of the attribute head (``models.heads.ClassificationHead``).
_CLASSIFIER_LAYERS = {"conv": "features.0", "fc1": "classifier.1", "fc2": "classifier.4"}


def is_study_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state_dict uses the study's names (``decoders.*`` heads)."""
    return any(key.startswith("decoders.") for key in state_dict)


def convert(state_dict: Mapping[str, Tensor], cfg: ExperimentConfig) -> dict[str, Tensor]:
    """The study model's tensors under this project's names, for the model ``cfg`` describes.

    Raises DataError naming the first key that has no place in this project's model.
    """
    converted: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        converted[_rename(key, cfg)] = tensor
    return _drop_unused_segmentation_output(converted, cfg)


def _rename(key: str, cfg: ExperimentConfig) -> str:
    if key.startswith("backbone."):
        return re.sub(r"^backbone\.stem1\.", "backbone.stem.", key)
    if not key.startswith("decoders."):
        raise DataError(f"study checkpoint key '{key}': expected backbone.* or decoders.* (the study's model)")
    rest = key[len("decoders."):]
    task, _, layer = rest.partition(".")
    if task not in cfg.task_list:
        if cfg.is_multitask:
            raise DataError(f"study checkpoint key '{key}': head '{task}' is not in task_list {cfg.task_list}")
        task, layer = cfg.task_list[0], rest  # a single-task model: decoders.<layer>
    name, _, param = layer.partition(".")
    if name in _CLASSIFIER_LAYERS:
        layer = f"{_CLASSIFIER_LAYERS[name]}.{param}"
    return f"heads.{task}.{layer}"


def _drop_unused_segmentation_output(state: dict[str, Tensor], cfg: ExperimentConfig) -> dict[str, Tensor]:
    """Keep the first ``num_seg_classes`` outputs of the segmentation head's last conv (see the module docstring)."""
    classes = cfg.num_seg_classes
    if "segmentsemantic" not in cfg.task_list or classes is None:
        return state
    last = max(
        (key for key in state if key.startswith("heads.segmentsemantic.") and key.endswith(".weight") and state[key].ndim == 4),
        key=lambda key: int(key.split(".")[2]) if key.split(".")[2].isdigit() else -1,
        default=None,
    )
    if last is None or state[last].shape[0] != classes + 1:
        return state
    bias = last.removesuffix("weight") + "bias"
    state[last] = state[last][:classes].clone()
    if bias in state:
        state[bias] = state[bias][:classes].clone()
    return state
