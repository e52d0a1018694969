"""Joint transforms of an image and its dense targets: resize, augmentation, conversion to a sample.

A sample travels as *fields*: C x H x W tensors keyed by ``"image"`` or by their task name.
Geometric transforms move every field together, each with the interpolation its encoding
needs: bilinear for the image and the edge map, nearest for labels, depth and normals, so that
invalid pixels (label 255, depth 0, zero normals) stay exactly invalid and no label value is
invented. Fields with fewer than three dimensions (per-image labels) pass through unchanged.
Randomness comes from torch's RNG (the DataLoader seeds it per worker) or an explicit generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from utils.constants import IMAGENET_MEAN, IMAGENET_STD

IMAGE = "image"
SEGMENTATION = "segmentsemantic"
DEPTH = "depth_euclidean"
NORMALS = "surface_normal"
EDGE = "edge_texture"

#: Scale factors of the random scale-crop augmentation (as in the MTL literature on NYU-v2).
SCALES = (1.0, 1.2, 1.5)
Fields = dict[str, torch.Tensor]
DepthNormalization = Literal["none", "per_image_max"]
ImageNormalization = Literal["none", "imagenet"]

_SMOOTH_FIELDS = frozenset({IMAGE, EDGE})


def _interpolation(field: str) -> InterpolationMode:
    return InterpolationMode.BILINEAR if field in _SMOOTH_FIELDS else InterpolationMode.NEAREST_EXACT


def _is_spatial(value: torch.Tensor) -> bool:
    return value.ndim >= 3


def resize(fields: Mapping[str, torch.Tensor], size: Sequence[int]) -> Fields:
    """Every spatial field to `size` (H, W); bilinear with antialiasing for smooth fields."""
    return {
        name: F.resize(value, list(size), interpolation=_interpolation(name), antialias=True) if _is_spatial(value) else value
        for name, value in fields.items()
    }


def random_scale_crop(
    fields: Mapping[str, torch.Tensor],
    *,
    scales: Sequence[float] = SCALES,
    generator: torch.Generator | None = None,
) -> Fields:
    """Zoom in by a random factor s and crop back to the input size.

    Depth is divided by s: magnifying a scene by s looks like moving the camera s times closer.
    """
    scale = float(scales[int(torch.randint(len(scales), (1,), generator=generator))])
    if scale == 1.0:
        return dict(fields)
    height, width = fields[IMAGE].shape[-2:]
    big = [round(height * scale), round(width * scale)]
    top = int(torch.randint(big[0] - height + 1, (1,), generator=generator))
    left = int(torch.randint(big[1] - width + 1, (1,), generator=generator))
    out: Fields = {}
    for name, value in fields.items():
        if _is_spatial(value):
            value = F.resize(value, big, interpolation=_interpolation(name), antialias=True)
            value = F.crop(value, top, left, height, width)
            if name == DEPTH:
                value = value / scale
        out[name] = value
    return out


def horizontal_flip(fields: Mapping[str, torch.Tensor]) -> Fields:
    """Mirror every spatial field; normals' x component changes sign with the mirror."""
    out: Fields = {}
    for name, value in fields.items():
        if _is_spatial(value):
            value = F.horizontal_flip(value)
            if name == NORMALS:
                value = torch.cat([-value[:1], value[1:]])
        out[name] = value
    return out


def augment(fields: Mapping[str, torch.Tensor], *, generator: torch.Generator | None = None) -> Fields:
    """Training augmentation: random scale-crop, then a horizontal flip with probability 1/2."""
    out = random_scale_crop(fields, generator=generator)
    if float(torch.rand((), generator=generator)) < 0.5:
        out = horizontal_flip(out)
    return out


def normalize_image(image: torch.Tensor, normalization: ImageNormalization = "none") -> torch.Tensor:
    """uint8 RGB 3 x H x W -> float32 in [0, 1] (the study's ``ToTensor``), or ImageNet-normalised."""
    pixels = F.to_dtype(image, torch.float32, scale=True)
    return F.normalize(pixels, list(IMAGENET_MEAN), list(IMAGENET_STD)) if normalization == "imagenet" else pixels


def per_image_max(depth: torch.Tensor) -> torch.Tensor:
    """Depth divided by its largest value (invalid pixels are 0 and stay 0), as in the study."""
    return depth / depth.amax().clamp_min(torch.finfo(depth.dtype).tiny)


def unit_normals(normals: torch.Tensor) -> torch.Tensor:
    """Renormalise 3 x H x W normals (storage rounding); zero vectors stay zero."""
    length = (normals * normals).sum(dim=0, keepdim=True).sqrt()  # 50x faster than linalg.vector_norm(dim=0)
    return normals / length.clamp_min(1e-6)


def to_sample(
    fields: Mapping[str, torch.Tensor], *, depth_normalization: DepthNormalization = "none",
    image_normalization: ImageNormalization = "none",
) -> dict:
    """Fields -> the model's sample ``{"image": float 3xHxW, "targets": {task: tensor}}``.

    Tensors are fresh copies, so callers may modify them without touching a cache.
    """
    targets: dict[str, torch.Tensor] = {}
    for name, value in fields.items():
        if name == SEGMENTATION:
            targets[name] = value.squeeze(0).to(torch.int64)
        elif name == NORMALS:
            targets[name] = unit_normals(value.to(torch.float32))
        elif name == DEPTH and depth_normalization == "per_image_max":
            targets[name] = per_image_max(value.to(torch.float32))
        elif name != IMAGE:
            targets[name] = value.to(torch.float32, copy=True)
    return {"image": normalize_image(fields[IMAGE], image_normalization), "targets": targets}
