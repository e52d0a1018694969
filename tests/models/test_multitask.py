"""MultiTaskModel: one backbone pass per forward, outputs at input resolution, built from the config."""

import pytest
import torch
from torch import nn

from engine.trial import build_trial
from models.multitask import MultiTaskModel
from utils.config import validate

NYU_TASKS = ["segmentsemantic", "depth_euclidean", "surface_normal"]


def _cfg(**keys):
    raw = {"Experiment_name": "t", "task_list": NYU_TASKS, "backbone": "resnetd18", "backbone_width": 0.125,
           "head_channels": 8, "num_seg_classes": 3 if keys.get("dataset_name") == "celebA" else 40}
    return validate({**raw, **keys})


def _model(cfg) -> MultiTaskModel:
    return build_trial(cfg, device=torch.device("cpu")).model


def test_backbone_runs_once_per_forward_for_three_tasks():
    model = _model(_cfg())
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1
    model(torch.randn(2, 3, 32, 32), tasks=["depth_euclidean"])
    assert len(calls) == 2


def test_nyu_outputs_are_at_input_resolution():
    outputs = _model(_cfg(task_list=[*NYU_TASKS, "edge_texture"]))(torch.randn(2, 3, 40, 48))
    assert list(outputs) == [*NYU_TASKS, "edge_texture"]
    assert outputs["segmentsemantic"].shape == (2, 40, 40, 48)
    assert outputs["depth_euclidean"].shape == (2, 1, 40, 48)
    assert outputs["surface_normal"].shape == (2, 3, 40, 48)
    assert outputs["edge_texture"].shape == (2, 1, 40, 48)


def test_celeba_outputs_segmentation_and_attribute_logits():
    cfg = _cfg(dataset_name="celebA", task_list=["segmentsemantic", "class_male", "class_smile"])
    outputs = _model(cfg)(torch.randn(2, 3, 32, 32))
    assert outputs["segmentsemantic"].shape == (2, 3, 32, 32)
    assert outputs["class_male"].shape == (2,) and outputs["class_smile"].shape == (2,)


def test_single_task_model_has_one_head():
    model = _model(_cfg(setup="singletask", task_list=["depth_euclidean"], num_seg_classes=13))
    assert list(model.heads) == ["depth_euclidean"]


def test_forward_subset_of_tasks_and_unknown_task():
    model = _model(_cfg())
    outputs = model(torch.randn(2, 3, 32, 32), tasks=["surface_normal"])
    assert list(outputs) == ["surface_normal"]
    with pytest.raises(KeyError, match="edge_texture"):
        model(torch.randn(2, 3, 32, 32), tasks=["edge_texture"])


def test_an_attribute_loss_reaches_the_backbone_and_only_its_head():
    model = _model(_cfg(task_list=["segmentsemantic", "class_male"], dataset_name="celebA"))
    outputs = model(torch.randn(2, 3, 32, 32))
    outputs["class_male"].sum().backward()
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.heads["segmentsemantic"].parameters())


def test_channels_last_applies_to_conv_weights():
    model = _model(_cfg(channels_last=True))
    weight = model.backbone.stem[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()


def test_model_needs_a_head():
    with pytest.raises(ValueError):
        MultiTaskModel(nn.Identity(), nn.ModuleDict())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_channels_last_forward():
    model = _model(_cfg(channels_last=True, task_list=[*NYU_TASKS, "edge_texture"])).cuda()
    images = torch.randn(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images)
    assert outputs["segmentsemantic"].shape == (2, 40, 32, 32)
    assert all(torch.isfinite(output.float()).all() for output in outputs.values())
