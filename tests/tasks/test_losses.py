"""Task losses: values against independent formulas, invalid pixels ignored, empty batches give 0 with a grad."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from tasks.attribute import AttributeTask
from tasks.depth import DepthTask
from tasks.edge import EdgeTask
from tasks.normals import NormalsTask
from tasks.segmentation import SEG_LOSSES, SegmentationTask
from utils.errors import ConfigError, DataError

N, C, H, W = 2, 4, 6, 5


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _segmentation_batch(invalid_share: float = 0.3):
    g = _generator()
    pred = torch.randn(N, C, H, W, generator=g)
    target = torch.randint(0, C, (N, H, W), generator=g)
    invalid = torch.rand(N, H, W, generator=g) < invalid_share
    return pred, target.masked_fill(invalid, 255), invalid


def _depth_batch():
    g = _generator()
    pred = torch.rand(N, 1, H, W, generator=g) * 5
    target = torch.rand(N, 1, H, W, generator=g) * 5 + 0.5
    invalid = torch.rand(N, 1, H, W, generator=g) < 0.3
    return pred, target.masked_fill(invalid, 0.0), invalid


def _normals_batch():
    g = _generator()
    pred = torch.randn(N, 3, H, W, generator=g)
    target = torch.nn.functional.normalize(torch.randn(N, 3, H, W, generator=g), dim=1)
    invalid = torch.rand(N, 1, H, W, generator=g) < 0.3
    return pred, target.masked_fill(invalid, 0.0), invalid.expand(-1, 3, -1, -1)


def _scramble(pred: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """``pred`` with large random values wherever the target is invalid."""
    noise = 50 * torch.randn(pred.shape, generator=torch.Generator().manual_seed(1))
    return torch.where(invalid, noise, pred)


def _expect_zero_with_grad(loss_fn, pred, target):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, target)
    assert loss.grad_fn is not None
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("loss_name", list(SEG_LOSSES))
def test_segmentation_losses_ignore_invalid_pixels(loss_name):
    task = SegmentationTask("segmentsemantic", C, loss_name=loss_name)
    pred, target, invalid = _segmentation_batch()
    scrambled = _scramble(pred, invalid.unsqueeze(1).expand_as(pred))
    assert torch.allclose(task.loss(pred, target), task.loss(scrambled, target), atol=1e-6)
    _expect_zero_with_grad(task.loss, pred, torch.full_like(target, 255))


def test_soft_cross_entropy_matches_label_smoothed_formula():
    pred, target, invalid = _segmentation_batch()
    log_p = torch.log_softmax(pred.double(), dim=1).permute(0, 2, 3, 1).numpy()  # N H W C
    t, valid = target.numpy(), ~invalid.numpy()
    nll = -np.take_along_axis(log_p, np.where(valid, t, 0)[..., None], axis=-1)[..., 0]
    per_pixel = 0.9 * nll + 0.1 / C * (-log_p.sum(-1))
    expected = per_pixel[valid].mean()
    loss = SegmentationTask("segmentsemantic", C, loss_name="softCEloss").loss(pred, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_equals_the_study_sum_of_per_class_means():
    pred, target, _ = _segmentation_batch()
    study = smp.losses.FocalLoss(mode="multiclass", gamma=2.5, ignore_index=255)(pred, target)
    ours = SegmentationTask("segmentsemantic", C, loss_name="Focal").loss(pred, target)
    assert ours.item() == pytest.approx(study.item(), rel=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_depth_loss_is_masked_l1_or_mse(squared):
    task = DepthTask("depth_euclidean", squared=squared)
    pred, target, invalid = _depth_batch()
    error = (pred - target).numpy()[~invalid.numpy()]
    expected = (error**2).mean() if squared else np.abs(error).mean()
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(task.loss(pred, target), task.loss(_scramble(pred, invalid), target))
    _expect_zero_with_grad(task.loss, pred, torch.zeros_like(target))


def test_depth_loss_refuses_mismatched_shapes():
    pred, target, _ = _depth_batch()
    with pytest.raises(ValueError, match="shape"):
        DepthTask("depth_euclidean").loss(pred, target[:, 0])


def test_normals_loss_is_one_minus_cosine_over_valid_pixels():
    task = NormalsTask("surface_normal")
    pred, target, invalid = _normals_batch()
    p, t = pred.double().numpy(), target.double().numpy()
    cosine = (p * t).sum(1) / np.linalg.norm(p, axis=1)
    expected = (1 - cosine)[~invalid[:, 0].numpy()].mean()
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert task.loss(3.0 * pred, target).item() == pytest.approx(expected, rel=1e-5)  # prediction normalised
    assert torch.allclose(task.loss(pred, target), task.loss(_scramble(pred, invalid), target))
    _expect_zero_with_grad(task.loss, pred, torch.zeros_like(target))


def test_edge_loss_is_huber_with_delta_0_2():
    g = _generator()
    pred, target = torch.rand(N, 1, H, W, generator=g), torch.rand(N, 1, H, W, generator=g)
    d = np.abs((pred - target).numpy())
    expected = np.where(d < 0.2, 0.5 * d**2, 0.2 * (d - 0.1)).mean()
    assert EdgeTask("edge_texture").loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


def _bce(logits: np.ndarray, labels: np.ndarray, pos_weight: float) -> float:
    p = 1 / (1 + np.exp(-logits))
    return float(np.mean(-(pos_weight * labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def test_attribute_loss_is_bce_on_logits_with_optional_pos_weight():
    logits = torch.tensor([-2.0, -0.5, 0.3, 4.0])
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    plain = AttributeTask("class_male").loss(logits, labels)
    assert plain.item() == pytest.approx(_bce(logits.numpy(), labels.numpy(), 1.0), rel=1e-5)
    balanced = AttributeTask("class_male", balance=True, positive_rate=0.2).loss(logits, labels)
    assert balanced.item() == pytest.approx(_bce(logits.numpy(), labels.numpy(), 4.0), rel=1e-5)


def test_balanced_attribute_loss_needs_a_usable_positive_rate():
    with pytest.raises(ConfigError, match="class_balance"):
        AttributeTask("class_glasses", balance=True).loss(torch.zeros(2), torch.zeros(2))
    with pytest.raises(DataError, match="class_glasses"):
        AttributeTask("class_glasses", balance=True, positive_rate=0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_do_not_sync_host_and_device():
    """Every loss but smp's Focal (boolean indexing inside smp) stays on the device."""
    device = torch.device("cuda")
    seg_pred, seg_target, _ = _segmentation_batch()
    cases = [
        *((SegmentationTask("segmentsemantic", C, loss_name=name), seg_pred, seg_target)
          for name in SEG_LOSSES if name != "Focal"),
        (DepthTask("depth_euclidean"), *_depth_batch()[:2]),
        (NormalsTask("surface_normal"), *_normals_batch()[:2]),
        (EdgeTask("edge_texture"), *_depth_batch()[:2]),
        (AttributeTask("class_male", balance=True, positive_rate=0.3), torch.randn(4), torch.ones(4)),
    ]
    for task, pred, target in cases:
        pred = pred.to(device).requires_grad_(True)
        target = target.to(device)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            task.loss(pred, target).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
