"""Decode once: a Dataset of dense samples that reads and resizes each file a single time.

JPEG decoding, 480x640 .npy loads and resizing cost far more than a training step can wait
for, so `DenseDataset` does them once, eagerly in ``__init__`` (before DataLoader workers
fork and share the memory copy-on-write), and keeps the resized fields in compact stacked
tensors (uint8 image and labels, float32 depth, float16 normals and edges). Per sample it then
only augments, converts and normalises. When the cache would exceed its byte budget it logs
that and decodes on access instead. A dataset layout plugs in as a `Source` that reads one
sample's files into the contract's encodings; the helpers below check and encode arrays.
Files are read strictly (`data.files`) and `data.preflight` checks a data folder before any of
this starts; bad samples fail the build or, with ``skip_bad_samples``, are skipped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from data.files import check_file
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
#: Names of skipped samples a split's log line shows.
SKIPPED_SHOWN = 5

_T = TypeVar("_T")

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

    def file_names(self, key: str) -> list[tuple[Path, str]]:
        """The same files as (folder, file name), the folders shared between keys: the pre-flight
        checks tens of thousands of names against folder listings without building a Path each."""
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

    Decoding is strict (``data.files``): a file that does not decode is a `DataError` naming it.
    With ``skip_bad`` such samples are left out instead, together with those the pre-flight
    already found (``bad``), and counted in one log line; ``keys`` then lists the good ones.
    A split whose samples are all bad is still an error. Over the cache budget, samples are
    decoded on access; every file is then checked structurally (headers, end markers) here
    instead, so that a truncated file is found at build time, not in the middle of training.

    Args:
        source: reads a sample's files (a layout's `Source`).
        keys: the split's sample keys, in order.
        size: (H, W) every field is resized to.
        augment: random scale-crop and flip (training split only).
        depth_normalization: ``"per_image_max"`` divides depth by its per-image maximum.
        image_normalization: ``"none"`` keeps pixels in [0, 1] (the study), ``"imagenet"`` standardises them.
        cache_budget: bytes the cache may take; above it samples are decoded on access.
        name: the split's name, for logs and the progress bar.
        skip_bad: skip (and count) samples with bad files instead of raising (``skip_bad_samples``).
        bad: samples of ``keys`` already found bad, with their problem (the pre-flight's); needs ``skip_bad``.
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
        skip_bad: bool = False,
        bad: Mapping[str, str] | None = None,
    ) -> None:
        if bad and not skip_bad:
            raise ValueError("DenseDataset: known bad samples can only be skipped with skip_bad=True")
        self.source = source
        listed = list(keys)
        #: Samples left out (skip_bad), with the problem of each, in the split's order.
        self.skipped: dict[str, str] = {key: bad[key] for key in listed if key in bad} if bad else {}
        self.keys = [key for key in listed if key not in self.skipped]
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.depth_normalization = depth_normalization
        self.image_normalization = image_normalization
        self.name = name
        self.skip_bad = skip_bad
        needed = len(self.keys) * sample_nbytes(source.tasks, self.size)
        self._cache: Fields | None = None
        if needed <= cache_budget:
            self._cache = self._decode_all()
        else:
            log.info(
                "%s: caching %d samples would take %.2f GiB, over the %.2f GiB budget; decoding on access",
                name, len(self.keys), needed / 2**30, cache_budget / 2**30,
            )
            self._scan_all()
        self._report_skipped(listed)

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

    def _decode(self, key: str) -> Fields:
        """Read, resize and convert to storage dtypes: the same result cached or not."""
        fields = resize(self.source.read(key), self.size)
        return {name: value.to(_STORAGE[name][1]) for name, value in fields.items()}

    def _each(self, work: Callable[[str], _T], desc: str) -> Iterator[tuple[str, _T]]:
        """``work`` over the keys in threads, yielding in order; a DataError raises or, with
        ``skip_bad``, records the sample as skipped. ConfigErrors and bugs always propagate.

        On an error the queued keys are cancelled, so that a bad file fails the build at once."""

        def attempt(key: str) -> _T | DataError:
            try:
                return work(key)
            except DataError as error:
                return error

        pool = ThreadPoolExecutor(max_workers=min(DECODE_THREADS, os.cpu_count() or 1))
        try:
            results = tqdm(pool.map(attempt, self.keys), total=len(self.keys), desc=f"{desc} {self.name}",
                           unit="img", leave=False, disable=None)
            for key, result in zip(self.keys, results):
                if not isinstance(result, DataError):
                    yield key, result
                elif self.skip_bad:
                    self.skipped[key] = str(result)
                else:
                    raise result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _decode_all(self) -> Fields:
        height, width = self.size
        cache = {
            field: torch.empty((len(self.keys), channels, height, width), dtype=dtype)
            for field, (channels, dtype) in ((f, _STORAGE[f]) for f in (IMAGE, *self.source.tasks))
        }
        good: list[str] = []
        for key, fields in self._each(self._decode, "decoding"):
            for name, value in fields.items():
                cache[name][len(good)] = value  # good samples are packed to the front
            good.append(key)
        if len(good) < len(self.keys):
            cache = {name: stacked[: len(good)].clone() for name, stacked in cache.items()}
            self.keys = good
        log.info("%s: cached %d samples (%.2f GiB)", self.name, len(self.keys), sum(t.nbytes for t in cache.values()) / 2**30)
        return cache

    def _scan_all(self) -> None:
        """Check every file's structure (``data.files.check_file``: headers, end markers, no decoding)."""

        def scan(key: str) -> None:
            for path in self.source.files(key):
                check_file(path)

        self.keys = [key for key, _ in self._each(scan, "checking")]

    def _report_skipped(self, listed: Sequence[str]) -> None:
        """One log line per split: how many were skipped, the first few; an error when none is left."""
        if not self.skipped:
            return
        first = next(iter(self.skipped.values()))
        if not self.keys:
            raise DataError(f"{first} (and every other of the {len(listed)} samples of the {self.name} split is bad too)")
        names = list(self.skipped)
        shown = ", ".join(names[:SKIPPED_SHOWN]) + (", ..." if len(names) > SKIPPED_SHOWN else "")
        log.warning(
            "%s: skipped %d of %d samples with bad files (skip_bad_samples): %s; first problem: %s",
            self.name, len(names), len(listed), shown, first,
        )


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
    """Edge map as 1 x H x W float32; NaN/Inf is a DataError (an edge map has no invalid value to map it to)."""
    edge = single_channel(array, path, size)
    if not np.isfinite(edge).all():
        raise DataError(f"{path}: {np.count_nonzero(~np.isfinite(edge))} non-finite values (NaN/Inf); expected a finite edge map")
    return torch.from_numpy(edge)[None]


def image_tensor(rgb: np.ndarray, path: Path) -> torch.Tensor:
    """H x W x 3 uint8 RGB as 3 x H x W, a channels-last view (torchvision resizes those fastest)."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"{path}: image of shape {rgb.shape}; expected H x W x 3 RGB")
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def segmentation_tensor(labels: np.ndarray, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Train ids 0..K-1 with 255 = ignore, as 1 x H x W uint8."""
    _expect_shape(labels, path, size)
    return torch.from_numpy(labels.astype(np.uint8))[None]
