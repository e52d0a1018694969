"""The study's saved models in our layout: keys and shapes fit, and the outputs equal an independent forward.

The study-layout state dicts are generated from ``tests/fixtures/study_checkpoint_layout.json``
(every key, shape and dtype of the study's two saved models). The reference forward below is
written from REFERENCE §4 directly on the study's key names with ``torch.nn.functional``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from engine import artifacts
from engine.trial import build_trial
from models import study
from utils import config
from utils.errors import DataError

LAYOUT = json.loads((Path(__file__).parents[1] / "fixtures" / "study_checkpoint_layout.json").read_text())
NYU = "NYU_resnetd50_segmentsemantic+surface_normal+depth_euclidean"
CELEBA = "celebA_resnetd50_segmentsemantic+class_male+class_smile"
STAGES = {"layer1": (1, 1), "layer2": (2, 1), "layer3": (1, 2), "layer4": (1, 4)}  # (stride, dilation)


def study_state_dict(name: str, seed: int = 0) -> dict[str, Tensor]:
    """Random tensors in the layout of one of the study's saved models, scaled so 50 layers stay finite."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in LAYOUT[name]["state_dict"]:
        if dtype == "int64":
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # BN scale
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
    return state


def _bn(state: dict[str, Tensor], x: Tensor, key: str) -> Tensor:
    return F.batch_norm(x, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                        state[f"{key}.bias"], training=False, eps=1e-5)


def _conv(state: dict[str, Tensor], x: Tensor, key: str, *, stride: int = 1, padding: int = 0, dilation: int = 1) -> Tensor:
    return F.conv2d(x, state[f"{key}.weight"], state.get(f"{key}.bias"), stride, padding, dilation)


def study_forward(state: dict[str, Tensor], x: Tensor, heads: dict[str, str]) -> dict[str, Tensor]:
    """The study's model in eval mode (REFERENCE §4): ResNet-D-50 at output stride 8, ASPP and attribute heads.

    Returns each head's output before upsampling; attribute heads return the input of their sigmoid.
    """
    for conv, norm, stride in (("0", "1", 2), ("3", "4", 1), ("6", "7", 1)):
        x = F.relu(_bn(state, _conv(state, x, f"backbone.stem1.{conv}", stride=stride, padding=1), f"backbone.stem1.{norm}"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, (stride, dilation) in STAGES.items():
        blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith(f"backbone.{stage}.")})
        for block in blocks:
            key, step = f"backbone.{stage}.{block}", stride if block == 0 else 1
            out = F.relu(_bn(state, _conv(state, x, f"{key}.conv1"), f"{key}.bn1"))
            out = F.relu(_bn(state, _conv(state, out, f"{key}.conv2", stride=step, padding=dilation, dilation=dilation), f"{key}.bn2"))
            out = _bn(state, _conv(state, out, f"{key}.conv3"), f"{key}.bn3")
            shortcut = x
            if f"{key}.downsample.0.weight" in state:
                shortcut = _bn(state, _conv(state, x, f"{key}.downsample.0", stride=step), f"{key}.downsample.1")
            x = F.relu(out + shortcut)
    outputs = {}
    for task, kind in heads.items():
        key = f"decoders.{task}"
        if kind == "dense":
            branches = [F.relu(_bn(state, _conv(state, x, f"{key}.0.convs.0.0"), f"{key}.0.convs.0.1"))]
            for index, rate in zip((1, 2, 3), (12, 24, 36)):
                conv = _conv(state, x, f"{key}.0.convs.{index}.0", padding=rate, dilation=rate)
                branches.append(F.relu(_bn(state, conv, f"{key}.0.convs.{index}.1")))
            pooled = F.relu(_bn(state, _conv(state, F.adaptive_avg_pool2d(x, 1), f"{key}.0.convs.4.1"), f"{key}.0.convs.4.2"))
            branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
            y = F.relu(_bn(state, _conv(state, torch.cat(branches, 1), f"{key}.0.project.0"), f"{key}.0.project.1"))
            y = F.relu(_bn(state, _conv(state, y, f"{key}.1", padding=1), f"{key}.2"))
            outputs[task] = _conv(state, y, f"{key}.4")
        else:
            y = F.max_pool2d(F.relu(_conv(state, x, f"{key}.conv", padding=1)), 2, 2)
            y = F.adaptive_avg_pool2d(y, 1).flatten(1)
            y = F.linear(F.relu(F.linear(y, state[f"{key}.fc1.weight"], state[f"{key}.fc1.bias"])),
                         state[f"{key}.fc2.weight"], state[f"{key}.fc2.bias"])
            outputs[task] = y[:, 0]
    return outputs


def our_config(dataset: str, tasks: list[str], classes: int) -> config.ExperimentConfig:
    return config.validate({"Experiment_name": "study", "dataset_name": dataset, "task_list": tasks, "backbone": "resnetd50",
                            "num_seg_classes": classes})


CASES = {
    NYU: ("NYU", ["segmentsemantic", "surface_normal", "depth_euclidean"], 40,
          {"segmentsemantic": "dense", "surface_normal": "dense", "depth_euclidean": "dense"}),
    CELEBA: ("celebA", ["segmentsemantic", "class_male", "class_smile"], 3,
             {"segmentsemantic": "dense", "class_male": "classification", "class_smile": "classification"}),
}


@pytest.mark.parametrize("name", [NYU, CELEBA])
def test_converted_model_matches_the_studys_forward(name: str) -> None:
    dataset, tasks, classes, kinds = CASES[name]
    state = study_state_dict(name)
    cfg = our_config(dataset, tasks, classes)
    model = build_trial(cfg, device=torch.device("cpu")).model.eval()
    artifacts.load_weights(model, study.convert(state, cfg), source=Path(name))  # every key and shape fits
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = {task: head(model.backbone(image)) for task, head in model.heads.items()}
        theirs = study_forward(state, image, kinds)
    expected_shapes = LAYOUT[name]["outputs_for_input_1x3x64x64"]
    for task in tasks:
        reference = theirs[task]
        assert list(reference.shape) == expected_shapes[task]
        if task == "segmentsemantic" and dataset == "NYU":
            assert reference.shape[1] == 41 and ours[task].shape[1] == 40
            reference = reference[:, :40]  # output 40 is the one no label trains (labels are png class - 1)
        scale = float(reference.abs().max())
        assert scale > 0 and torch.isfinite(reference).all()
        assert float((ours[task] - reference).abs().max()) <= 1e-5 * scale, task


def test_a_single_task_study_model_converts() -> None:
    nyu = study_state_dict(NYU)
    single = {key.replace("decoders.depth_euclidean.", "decoders."): value for key, value in nyu.items()
              if not key.startswith(("decoders.segmentsemantic", "decoders.surface_normal"))}
    cfg = config.validate({"Experiment_name": "s", "setup": "singletask", "task_list": ["depth_euclidean"],
                           "backbone": "resnetd50", "num_seg_classes": 40})
    model = build_trial(cfg, device=torch.device("cpu")).model
    artifacts.load_weights(model, study.convert(single, cfg), source=Path("single"))
    assert torch.equal(model.heads["depth_euclidean"][4].weight, nyu["decoders.depth_euclidean.4.weight"])


def test_a_mismatched_study_checkpoint_names_the_key() -> None:
    dataset, tasks, classes, _ = CASES[CELEBA]
    cfg = our_config(dataset, tasks, classes)
    model = build_trial(cfg, device=torch.device("cpu")).model
    state = study_state_dict(CELEBA)
    state["decoders.class_male.fc1.weight"] = torch.zeros(16, 64)
    with pytest.raises(DataError, match=r"'heads.class_male.classifier.1.weight' has shape \(16, 64\)"):
        artifacts.load_weights(model, study.convert(state, cfg), source=Path("x.pt"))
    del state["backbone.layer4.2.bn3.running_var"]
    with pytest.raises(DataError, match="lacks 'backbone.layer4.2.bn3.running_var'"):
        artifacts.load_weights(model, study.convert(state, cfg), source=Path("x.pt"))
    with pytest.raises(DataError, match="head 'class_glasses' is not in task_list"):
        study.convert({"decoders.class_glasses.conv.weight": torch.zeros(1)}, cfg)
