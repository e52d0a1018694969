"""The NYUD_MT layout of NYU-v2 (the study's release: 40 classes, 795 train / 654 val at 480x640).

``images/<id>.jpg`` RGB · ``segmentation/<id>.png`` uint8 (0 = void, 1..40) · ``depth/<id>.npy``
metres (0 = invalid) · ``normals/<id>.npy`` H x W x 3 (all-zero = invalid) · ``edge/<id>.npy`` ·
``gt_sets/{train,val[,test]}.txt`` (one id a line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from data.cache import (
    depth_tensor,
    edge_tensor,
    image_tensor,
    normals_tensor,
    segmentation_tensor,
)
from data.files import load_npy, read_color, read_labels
from data.preflight import check_disjoint, read_id_list
from data.transforms import DEPTH, EDGE, IMAGE, NORMALS, SEGMENTATION, Fields
from utils.constants import IGNORE_INDEX, NYUD_NUM_CLASSES
from utils.errors import ConfigError, DataError

NAME = "nyud"
NUM_CLASSES = NYUD_NUM_CLASSES
#: Split folders: ``gt_sets`` and, with the study's ``meta: true``, ``meta_gt_sets``.
SPLIT_DIRS = {False: "gt_sets", True: "meta_gt_sets"}
TASKS = (SEGMENTATION, DEPTH, NORMALS, EDGE)
SPLIT_FILES = ("train", "val", "test")

_TASK_FILES = {
    SEGMENTATION: ("segmentation", ".png"),
    DEPTH: ("depth", ".npy"),
    NORMALS: ("normals", ".npy"),
    EDGE: ("edge", ".npy"),
}


def detect(root: Path) -> bool:
    """A folder is NYUD_MT when it has ``images/`` and ``gt_sets/``."""
    return (root / "images").is_dir() and (root / "gt_sets").is_dir()


def find_splits(root: Path, *, meta: bool = False) -> dict[str, list[str]]:
    """The ids of ``gt_sets/<split>.txt`` (``meta_gt_sets/`` with ``meta``): train and val are required, test is optional.

    The files follow `data.preflight.read_id_list`'s rules (no blank lines, no repeated ids) and
    the splits must be disjoint."""
    splits = {}
    for name in SPLIT_FILES:
        path = root / SPLIT_DIRS[meta] / f"{name}.txt"
        if name == "test" and not path.exists():
            continue
        splits[name] = read_id_list(path, expected=f"the {name} ids of the NYUD_MT layout")
    check_disjoint(splits, {name: str(root / SPLIT_DIRS[meta] / f"{name}.txt") for name in splits})
    return splits


class Source:
    """Reads NYUD_MT samples: the image and the files of the requested tasks, strictly (`data.files`).

    ``num_classes`` (the config's ``num_seg_classes``) bounds the labels: a label file with a class
    the model has no output for is a `ConfigError`, not an index error in the loss later."""

    def __init__(self, root: Path, tasks: Sequence[str], *, num_classes: int | None = None) -> None:
        self.root = Path(root)
        self.tasks = tuple(tasks)
        self.num_classes = num_classes
        self._folders = {field: (self.root / folder, suffix) for field, (folder, suffix) in _TASK_FILES.items()}
        self._folders[IMAGE] = (self.root / "images", ".jpg")

    def _path(self, field: str, key: str) -> Path:
        folder, suffix = self._folders[field]
        return folder / f"{key}{suffix}"

    def files(self, key: str) -> list[Path]:
        return [self._path(field, key) for field in (IMAGE, *self.tasks)]

    def file_names(self, key: str) -> list[tuple[Path, str]]:
        return [(folder, f"{key}{suffix}") for folder, suffix in (self._folders[field] for field in (IMAGE, *self.tasks))]

    def read(self, key: str) -> Fields:
        path = self._path(IMAGE, key)
        bgr = read_color(path)
        fields = {IMAGE: image_tensor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path)}
        size = bgr.shape[:2]
        for task in self.tasks:
            path = self._path(task, key)
            if task == SEGMENTATION:
                fields[task] = _segmentation(path, size, self.num_classes)
            else:
                fields[task] = _NPY_READERS[task](load_npy(path), path, size)
        return fields


def _segmentation(path: Path, size: tuple[int, int], num_classes: int | None = None) -> torch.Tensor:
    """png 0 = void -> 255; classes 1..40 -> train ids 0..39."""
    labels = read_labels(path)
    top = int(labels.max(initial=0))
    if top > NUM_CLASSES:
        raise DataError(f"{path}: label {top} found; expected values 0 (void) .. {NUM_CLASSES}")
    if num_classes is not None and top > num_classes:
        raise ConfigError(
            f"config key 'num_seg_classes': {num_classes}, but {path} holds label {top} (class id {top - 1}); "
            f"expected labels 0 (void) .. {num_classes}, or num_seg_classes: {NUM_CLASSES} for the NYUD_MT layout"
        )
    train_ids = np.where(labels == 0, IGNORE_INDEX, labels.astype(np.int64) - 1)
    return segmentation_tensor(train_ids, path, size)


_NPY_READERS = {DEPTH: depth_tensor, NORMALS: normals_tensor, EDGE: edge_tensor}
