"""Prediction panels for wandb, on tiny tensors."""

from __future__ import annotations

import numpy as np
import torch

from utils import visualize
from utils.constants import IMAGENET_MEAN


def test_colours_void_and_invalid_black() -> None:
    seg = visualize.segmentation_colors(np.array([[0, 1, 255]]))
    assert seg[0, 2].tolist() == [0, 0, 0] and seg[0, 0].any() and seg[0, 1].any()
    assert not np.array_equal(seg[0, 0], seg[0, 1])
    normals = visualize.normal_colors(np.array([[[0.0, 0.0]], [[0.0, 0.0]], [[2.0, 0.0]]]))
    assert normals[0, 0].tolist() == [128, 128, 255] and normals[0, 1].tolist() == [0, 0, 0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert np.allclose(visualize.denormalize(torch.zeros(3, 2, 2), "imagenet")[0, 0], IMAGENET_MEAN)
    assert np.allclose(visualize.denormalize(mean)[0, 0], IMAGENET_MEAN)  # the study's inputs: pixels in [0, 1]


def test_panel_shows_every_task_of_a_few_items() -> None:
    n, h, w = 5, 16, 24
    targets = {
        "segmentsemantic": torch.randint(0, 4, (n, h, w)), "depth_euclidean": torch.rand(n, 1, h, w),
        "surface_normal": torch.randn(n, 3, h, w), "edge_texture": torch.rand(n, 1, h, w), "class_male": torch.ones(n),
    }
    outputs = {
        "segmentsemantic": torch.randn(n, 4, h, w), "depth_euclidean": torch.rand(n, 1, h, w),
        "surface_normal": torch.randn(n, 3, h, w), "edge_texture": torch.randn(n, 1, h, w), "class_male": torch.randn(n),
    }
    images = torch.randn(n, 3, h, w)
    panel = visualize.prediction_panel(images, targets, outputs, list(targets), max_items=2)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    narrow = visualize.prediction_panel(images, targets, outputs, ["segmentsemantic"], max_items=2)
    assert panel.shape[1] > 2 * narrow.shape[1]  # 9 columns against 3
    taller = visualize.prediction_panel(images, targets, outputs, ["segmentsemantic"], max_items=4)
    assert taller.shape[0] > 1.5 * narrow.shape[0]

def test_panel_draws_the_input_the_ground_truth_and_the_prediction() -> None:
    n, h, w = 2, 16, 24
    targets = {"segmentsemantic": torch.full((n, h, w), 1)}
    logits = torch.zeros(n, 4, h, w)
    logits[:, 2] = 5.0  # every pixel predicted as class 2
    images = torch.zeros(n, 3, h, w)
    images[:, 0] = 1.0  # a pure red input (pixels in [0, 1])
    panel = visualize.prediction_panel(images, targets, {"segmentsemantic": logits}, ["segmentsemantic"], max_items=2)
    colours = {tuple(c) for c in panel.reshape(-1, 3).tolist()}
    palette = visualize.palette()
    assert (255, 0, 0) in colours
    assert tuple(palette[1].tolist()) in colours and tuple(palette[2].tolist()) in colours
    assert tuple(palette[3].tolist()) not in colours
