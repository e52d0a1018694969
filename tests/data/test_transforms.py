"""Joint transforms: every field moves together, with the interpolation its encoding needs."""

from __future__ import annotations

import pytest
import torch

from data import transforms as T

H, W = 12, 16
NORMAL_TABLE = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1)


def striped_fields() -> T.Fields:
    """Vertical stripes of 4 classes (4 px wide): depth, normals and image are functions of the class."""
    seg = (torch.arange(W) // 4).expand(H, W).to(torch.uint8)
    image = (seg * 60).to(torch.uint8).expand(3, H, W).clone()
    return {
        T.IMAGE: image,
        T.SEGMENTATION: seg[None].clone(),
        T.DEPTH: (seg.float() + 1.0)[None],
        T.NORMALS: NORMAL_TABLE[seg.long()].permute(2, 0, 1).contiguous(),
        T.EDGE: torch.rand(1, H, W),
        "class_male": torch.tensor(1.0),
    }


def test_flip_mirrors_every_field_and_negates_normal_x() -> None:
    fields = striped_fields()
    flipped = T.horizontal_flip(fields)
    for name in (T.IMAGE, T.SEGMENTATION, T.DEPTH, T.EDGE):
        assert torch.equal(flipped[name], fields[name].flip(-1)), name
    mirrored = fields[T.NORMALS].flip(-1)
    assert torch.equal(flipped[T.NORMALS][0], -mirrored[0])
    assert torch.equal(flipped[T.NORMALS][1:], mirrored[1:])
    assert flipped["class_male"] is fields["class_male"]
    twice = T.horizontal_flip(flipped)
    assert all(torch.equal(twice[name], fields[name]) for name in fields)


def test_scale_crop_keeps_fields_aligned_and_divides_depth() -> None:
    fields = striped_fields()
    out = T.random_scale_crop(fields, scales=(1.5,), generator=torch.Generator().manual_seed(3))
    assert all(out[name].shape == fields[name].shape for name in fields)
    seg = out[T.SEGMENTATION][0].long()
    assert set(seg.unique().tolist()) <= set(range(4))
    # Depth and normals were resized with the same nearest mapping as the labels.
    torch.testing.assert_close(out[T.DEPTH][0] * 1.5, seg.float() + 1.0)
    torch.testing.assert_close(out[T.NORMALS], NORMAL_TABLE[seg].permute(2, 0, 1))
    # The image (bilinear) agrees with the labels away from stripe borders.
    interior = (seg[:, 1:-1] == seg[:, :-2]) & (seg[:, 1:-1] == seg[:, 2:])
    assert torch.equal(out[T.IMAGE][0, :, 1:-1][interior].long(), (seg[:, 1:-1] * 60)[interior])


def test_scale_one_changes_nothing() -> None:
    fields = striped_fields()
    out = T.random_scale_crop(fields, scales=(1.0,))
    assert all(torch.equal(out[name], fields[name]) for name in fields)


def test_augment_is_deterministic_given_the_generator() -> None:
    fields = striped_fields()
    runs = [T.augment(fields, generator=torch.Generator().manual_seed(seed)) for seed in (5, 5, 6, 7, 8, 9)]
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in fields)
    assert any(not torch.equal(run[T.DEPTH], runs[0][T.DEPTH]) for run in runs[2:])


def test_resize_uses_nearest_for_labels_depth_and_normals() -> None:
    fields = striped_fields()
    fields[T.DEPTH][..., :3, :] = 0.0  # invalid rows
    for size in ([7, 9], [30, 41]):
        out = T.resize(fields, size)
        assert out[T.IMAGE].shape == (3, *size) and out[T.IMAGE].dtype == torch.uint8
        assert set(out[T.SEGMENTATION].unique().tolist()) <= set(fields[T.SEGMENTATION].unique().tolist())
        assert set(out[T.DEPTH].unique().tolist()) <= set(fields[T.DEPTH].unique().tolist())
        assert (out[T.DEPTH] == 0).any()
        torch.testing.assert_close(out[T.NORMALS].norm(dim=0), torch.ones(size))


def test_to_sample_encodes_and_copies() -> None:
    fields = striped_fields()
    fields[T.NORMALS][:, 0, 0] = 0.0
    sample = T.to_sample(fields, depth_normalization="none", image_normalization="imagenet")
    image = sample["image"] * torch.tensor(T.IMAGENET_STD).view(3, 1, 1) + torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(image * 255.0, fields[T.IMAGE].float(), atol=1e-3, rtol=0)
    study = T.to_sample(fields)  # the study's ToTensor: pixels in [0, 1], nothing else
    torch.testing.assert_close(study["image"], fields[T.IMAGE].float() / 255.0)
    targets = sample["targets"]
    assert targets[T.SEGMENTATION].shape == (H, W) and targets[T.SEGMENTATION].dtype == torch.int64
    assert targets[T.NORMALS][:, 0, 0].abs().sum() == 0
    targets[T.DEPTH].zero_()
    assert fields[T.DEPTH].min() == 1.0, "the sample must not alias the input fields"


@pytest.mark.parametrize("peak", [4.0, 0.0])
def test_per_image_max_divides_by_the_largest_valid_depth(peak: float) -> None:
    depth = torch.zeros(1, H, W)
    depth[0, 2:5, 3:7] = torch.linspace(0.5, peak, 12).view(3, 4) if peak else 0.0
    out = T.to_sample({T.IMAGE: torch.zeros(3, H, W, dtype=torch.uint8), T.DEPTH: depth}, depth_normalization="per_image_max")
    normalised = out["targets"][T.DEPTH]
    assert torch.equal(normalised == 0, depth == 0)
    assert normalised.max() == (1.0 if peak else 0.0)
