"""Decode once: a Dataset of dense samples that reads and resizes each file a single time.

JPEG decoding, 480x640 .npy loads and resizing cost far more than a training step can wait
for, so `DenseDataset` does them once, eagerly in ``__init__`` (before DataLoader workers
fork and share the memory copy-on-write), and keeps the resized fields in compact stacked
tensors (uint8 image and labels, float32 depth, float16 normals and edges). Per sample it then
only augments, converts and normalises. When the cache would exceed its byte budget it logs
that and decodes on access instead. A dataset layout plugs in as a `Source` that reads one
sample's files into the contract's encodings; the helpers below check and encode arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from data.transforms import (
    DEPTH,
    EDGE,
    IMAGE,
    NORMALS,
    SEGMENTATION,
    DepthNormalization,
    Fields,
    ImageNormalization,
    augment,
    resize,
    to_sample,
)
from utils.errors import DataError

log = logging.getLogger(__name__)

#: Default memory budget of one build's caches (all splits together).
CACHE_BUDGET_BYTES = 4 * 2**30
#: Threads that decode files while the cache is built (OpenCV, numpy I/O and torch release the GIL).
DECODE_THREADS = 8

#: Channels and storage dtype of each cached field.
_STORAGE: dict[str, tuple[int, torch.dtype]] = {
    IMAGE: (3, torch.uint8),
    SEGMENTATION: (1, torch.uint8),
    DEPTH: (1, torch.float32),
    NORMALS: (3, torch.float16),
    EDGE: (1, torch.float16),
}


class Source(Protocol):
    """Reads one sample of a dataset layout, at its native size, in the contract's encodings."""

    tasks: tuple[str, ...]

    def files(self, key: str) -> list[Path]:
        """Every file `read(key)` opens, so missing ones are reported before decoding starts."""
        ...

    def read(self, key: str) -> Fields:
        """``image`` uint8 3xHxW RGB and one tensor per task (see docs/contracts.md)."""
        ...


def sample_nbytes(tasks: Sequence[str], size: Sequence[int]) -> int:
    """Bytes one cached sample takes at `size` (H, W)."""
    pixels = int(size[0]) * int(size[1])
    return sum(channels * dtype.itemsize * pixels for channels, dtype in (_STORAGE[f] for f in (IMAGE, *tasks)))


class DenseDataset(Dataset):
    """Samples ``{"image", "targets"}`` of one split, decoded once and served from memory.

    Args:
        source: reads a sample's files (a layout's `Source`).
        keys: the split's sample keys, in order.
        size: (H, W) every field is resized to.
        augment: random scale-crop and flip (training split only).
        depth_normalization: ``"per_image_max"`` divides depth by its per-image maximum.
        image_normalization: ``"none"`` keeps pixels in [0, 1] (the study), ``"imagenet"`` standardises them.
        cache_budget: bytes the cache may take; above it samples are decoded on access.
        name: the split's name, for logs and the progress bar.
    """

    def __init__(
        self,
        source: Source,
        keys: Sequence[str],
        *,
        size: Sequence[int],
        augment: bool = False,
        depth_normalization: DepthNormalization = "none",
        image_normalization: ImageNormalization = "none",
        cache_budget: int = CACHE_BUDGET_BYTES,
        name: str = "dataset",
    ) -> None:
        self.source = source
        self.keys = list(keys)
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.depth_normalization = depth_normalization
        self.image_normalization = image_normalization
        self.name = name
        self._check_files()
        needed = len(self.keys) * sample_nbytes(source.tasks, self.size)
        self._cache: Fields | None = None
        if needed <= cache_budget:
            self._cache = self._decode_all()
        else:
            log.info(
                "%s: caching %d samples would take %.2f GiB, over the %.2f GiB budget; decoding on access",
                name, len(self.keys), needed / 2**30, cache_budget / 2**30,
            )

    @property
    def cached_bytes(self) -> int:
        """Bytes the in-memory cache holds (0 when decoding on access)."""
        return 0 if self._cache is None else sum(t.nbytes for t in self._cache.values())

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        if self._cache is None:
            fields = self._decode(self.keys[index])
        else:
            fields = {name: stacked[index] for name, stacked in self._cache.items()}
        if self.augment:
            fields = augment(fields)
        return to_sample(fields, depth_normalization=self.depth_normalization, image_normalization=self.image_normalization)

    def _check_files(self) -> None:
        for key in self.keys:
            for path in self.source.files(key):
                if not path.is_file():
                    raise DataError(f"{path}: file not found; expected it for sample '{key}' of the {self.name} split")

    def _decode(self, key: str) -> Fields:
        """Read, resize and convert to storage dtypes: the same result cached or not."""
        fields = resize(self.source.read(key), self.size)
        return {name: value.to(_STORAGE[name][1]) for name, value in fields.items()}

    def _decode_all(self) -> Fields:
        height, width = self.size
        cache = {
            field: torch.empty((len(self.keys), channels, height, width), dtype=dtype)
            for field, (channels, dtype) in ((f, _STORAGE[f]) for f in (IMAGE, *self.source.tasks))
        }
        with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
            decoded = pool.map(self._decode, self.keys)
            progress = tqdm(decoded, total=len(self.keys), desc=f"decoding {self.name}", unit="img", leave=False, disable=None)
            for index, fields in enumerate(progress):
                for name, value in fields.items():
                    cache[name][index] = value
        log.info("%s: cached %d samples (%.2f GiB)", self.name, len(self.keys), sum(t.nbytes for t in cache.values()) / 2**30)
        return cache


def load_npy(path: Path) -> np.ndarray:
    """A .npy array, or a DataError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({error}); expected a .npy array") from None


def _expect_shape(array: np.ndarray, path: Path, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise DataError(f"{path}: array of shape {array.shape}; expected {shape} to match the image")


def single_channel(array: np.ndarray, path: Path, size: tuple[int, int]) -> np.ndarray:
    """An H x W (or H x W x 1) map as H x W float32."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    _expect_shape(array, path, size)
    return array.astype(np.float32, copy=False)


def depth_tensor(array: np.ndarray, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Depth in metres as 1 x H x W float32; non-finite and non-positive values become 0 (invalid)."""
    depth = single_channel(array, path, size)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return torch.from_numpy(depth)[None]


def normals_tensor(array: np.ndarray, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Normals as 3 x H x W (a view of the H x W x 3 array); non-finite components become 0.

    Vectors are made unit length per sample (`transforms.to_sample`), after resizing and storage.
    """
    _expect_shape(array, path, (*size, 3))
    normals = array.astype(np.float32, copy=False)
    if not np.isfinite(normals).all():
        normals = np.where(np.isfinite(normals), normals, np.float32(0.0))
    return torch.from_numpy(normals).permute(2, 0, 1)


def edge_tensor(array: np.ndarray, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Edge map as 1 x H x W float32."""
    return torch.from_numpy(single_channel(array, path, size))[None]


def image_tensor(rgb: np.ndarray, path: Path) -> torch.Tensor:
    """H x W x 3 uint8 RGB as 3 x H x W, a channels-last view (torchvision resizes those fastest)."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"{path}: image of shape {rgb.shape}; expected H x W x 3 RGB")
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def segmentation_tensor(labels: np.ndarray, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Train ids 0..K-1 with 255 = ignore, as 1 x H x W uint8."""
    _expect_shape(labels, path, size)
    return torch.from_numpy(labels.astype(np.uint8))[None]
