"""The MTAN layout of NYU-v2 (widely used in MTL papers: 13 classes, 795 train / 654 val at 288x384).

``{train,val[,test]}/{image,label,depth,normal}/<i>.npy`` with i = 0..n-1 per split: image
H x W x 3 float in [0, 1] · label H x W float 0..12, -1 = ignore · depth H x W x 1 metres,
0 = invalid · normal H x W x 3, all-zero = invalid. There are no edge maps.
Sample keys are ``"<split folder>/<i>"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.cache import (
    depth_tensor,
    image_tensor,
    normals_tensor,
    segmentation_tensor,
)
from data.files import load_npy
from data.transforms import DEPTH, IMAGE, NORMALS, SEGMENTATION, Fields
from utils.constants import IGNORE_INDEX, MTAN_NUM_CLASSES
from utils.errors import ConfigError, DataError

NAME = "mtan"
NUM_CLASSES = MTAN_NUM_CLASSES
TASKS = (SEGMENTATION, DEPTH, NORMALS)
SPLIT_FOLDERS = ("train", "val", "test")

_FOLDERS = {IMAGE: "image", SEGMENTATION: "label", DEPTH: "depth", NORMALS: "normal"}
_RANGE_TOLERANCE = 1e-3


def detect(root: Path) -> bool:
    """A folder is MTAN when it has ``train/image/``."""
    return (root / "train" / "image").is_dir()


def find_splits(root: Path, *, meta: bool = False) -> dict[str, list[str]]:
    """Keys of the ``train/`` and ``val/`` folders (required) and of ``test/`` (optional)."""
    if meta:
        raise ConfigError(f"config key 'meta': the MTAN layout at {root} has no meta_gt_sets; expected meta: false")
    splits = {}
    for name in SPLIT_FOLDERS:
        folder = root / name / "image"
        if not folder.is_dir():
            if name == "test":
                continue
            raise DataError(f"{folder}: folder not found; expected the {name} images of the MTAN layout as <i>.npy")
        indices = sorted(int(path.stem) for path in folder.glob("*.npy") if path.stem.isdigit())
        if not indices:
            raise DataError(f"{folder}: no <i>.npy images; expected files 0.npy .. n-1.npy")
        splits[name] = [f"{name}/{index}" for index in indices]
    return splits


class Source:
    """Reads MTAN samples: the image and the arrays of the requested tasks.

    ``num_classes`` (the config's ``num_seg_classes``) bounds the labels: a class the model has
    no output for is a `ConfigError`."""

    def __init__(self, root: Path, tasks: Sequence[str], *, num_classes: int | None = None) -> None:
        self.root = Path(root)
        self.tasks = tuple(tasks)
        self.num_classes = num_classes
        self._split_folders: dict[str, dict[str, Path]] = {}

    def _path(self, field: str, key: str) -> Path:
        split, index = key.split("/")
        return self.root / split / _FOLDERS[field] / f"{index}.npy"

    def files(self, key: str) -> list[Path]:
        return [self._path(field, key) for field in (IMAGE, *self.tasks)]

    def file_names(self, key: str) -> list[tuple[Path, str]]:
        split, index = key.split("/")
        if split not in self._split_folders:
            self._split_folders[split] = {field: self.root / split / folder for field, folder in _FOLDERS.items()}
        folders = self._split_folders[split]
        return [(folders[field], f"{index}.npy") for field in (IMAGE, *self.tasks)]

    def read(self, key: str) -> Fields:
        path = self._path(IMAGE, key)
        image = load_npy(path)
        fields = {IMAGE: image_tensor(_to_uint8(image, path), path)}
        size = image.shape[:2]
        for task in self.tasks:
            path = self._path(task, key)
            array = load_npy(path)
            if task == SEGMENTATION:
                fields[task] = _segmentation(array, path, size, self.num_classes)
            elif task == DEPTH:
                fields[task] = depth_tensor(array, path, size)
            else:
                fields[task] = normals_tensor(array, path, size)
        return fields


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """[0, 1] floats -> uint8, the images' original quantisation, so the cache stays small.

    NaN/Inf is a DataError: an image has no invalid value to map it to (min/max propagate NaN,
    so the range check finds it for free)."""
    if not np.issubdtype(image.dtype, np.floating) or image.size == 0:
        raise DataError(f"{path}: image of dtype {image.dtype}; expected floats in [0, 1]")
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError(f"{path}: image with non-finite values (NaN/Inf); expected floats in [0, 1]")
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise DataError(f"{path}: image values in [{low:.3g}, {high:.3g}]; expected floats in [0, 1]")
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _segmentation(labels: np.ndarray, path: Path, size: tuple[int, int], num_classes: int | None = None) -> torch.Tensor:
    """Float labels 0..12 -> int ids; -1 (ignore) and non-finite values -> 255 (ignored, like invalid depth)."""
    labels = np.where(np.isfinite(labels), np.rint(labels), -1)
    if labels.size and (labels.min() < -1 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels in [{labels.min():g}, {labels.max():g}]; expected -1 (ignore) .. {NUM_CLASSES - 1}")
    top = int(labels.max(initial=-1))
    if num_classes is not None and top >= num_classes:
        raise ConfigError(
            f"config key 'num_seg_classes': {num_classes}, but {path} holds label {top}; "
            f"expected labels -1 (ignore) .. {num_classes - 1}, or num_seg_classes: {NUM_CLASSES} for the MTAN layout"
        )
    return segmentation_tensor(np.where(labels < 0, IGNORE_INDEX, labels), path, size)
