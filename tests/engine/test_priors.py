"""Heads start at the best constant prediction of their loss on the training targets."""

import torch

from engine.priors import init_output_biases
from engine.trial import build_trial
from utils import config


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.depth = torch.rand(10, 1, 8, 8, generator=gen) * 4 + 1
        self.depth[:, :, :2] = 0  # invalid rows must not pull the prior down
        self.male = (torch.arange(10) < 3).float()

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 8, 8), "targets": {"depth_euclidean": self.depth[i], "class_male": self.male[i]}}


def build(dataset: str, task_list: list[str], **extra):
    cfg = config.validate({
        "Experiment_name": "p", "dataset_name": dataset, "task_list": task_list, "backbone": "resnetd18",
        "backbone_width": 0.125, "head_channels": 8, "num_seg_classes": 3, **extra,
    })
    trial = build_trial(cfg, device=torch.device("cpu"))
    if cfg.class_balance:
        trial.tasks["class_male"].balance, trial.tasks["class_male"].pos_weight = True, 7 / 3
    return trial.model, trial.tasks


def test_depth_head_starts_at_the_best_constant_of_its_loss() -> None:
    data = TinyDataset()
    depth = data.depth
    valid = depth[depth > 0]
    model, tasks = build("NYU", ["depth_euclidean"], depth_loss="l1", depth_normalization="none")
    init_output_biases(model, tasks, data)
    assert torch.allclose(model.output_layer("depth_euclidean").bias, valid.median().reshape(1))
    model, tasks = build("NYU", ["depth_euclidean"], depth_loss="mse", depth_normalization="none")
    init_output_biases(model, tasks, data)
    assert torch.allclose(model.output_layer("depth_euclidean").bias, valid.mean().reshape(1))


def test_a_sigmoid_depth_head_predicts_the_mean_through_its_activation() -> None:
    data = TinyDataset()
    data.depth = data.depth / 6  # per-image-max-like values in (0, 1)
    model, tasks = build("NYU", ["depth_euclidean"])  # the study's mse on normalised depth with a sigmoid
    init_output_biases(model, tasks, data)
    predicted = tasks["depth_euclidean"].predict(model.output_layer("depth_euclidean").bias)
    assert torch.allclose(predicted, data.depth[data.depth > 0].mean().reshape(1), atol=1e-6)


def test_attribute_head_starts_at_the_prior_logit_unless_balanced() -> None:
    data = TinyDataset()
    model, tasks = build("celebA", ["class_male"])
    init_output_biases(model, tasks, data)
    assert torch.allclose(model.output_layer("class_male").bias, torch.logit(torch.tensor([0.3])))
    balanced, balanced_tasks = build("celebA", ["class_male"], class_balance=True)
    before = balanced.output_layer("class_male").bias.clone()
    init_output_biases(balanced, balanced_tasks, data)
    assert torch.equal(balanced.output_layer("class_male").bias, before)


def test_normals_head_starts_at_the_mean_valid_direction() -> None:
    import tasks.normals as normals

    targets = torch.zeros(2, 3, 1, 2)
    targets[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    targets[1, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # the (0, 0, 0) pixels are invalid
    direction = torch.tensor([1.0, 0.0, 1.0]) / 2**0.5
    prior = normals.NormalsTask("surface_normal").output_prior(targets)
    assert torch.allclose(prior, direction)
    under_tanh = normals.NormalsTask("surface_normal", tanh=True)
    predicted = under_tanh.predict(under_tanh.output_prior(targets))
    assert torch.allclose(predicted / predicted.norm(), direction, atol=1e-6)
