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
    load_npy,
    normals_tensor,
    segmentation_tensor,
)
from data.transforms import DEPTH, EDGE, IMAGE, NORMALS, SEGMENTATION, Fields
from utils.constants import IGNORE_INDEX, NYUD_NUM_CLASSES
from utils.errors import DataError

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
    """The ids of ``gt_sets/<split>.txt`` (``meta_gt_sets/`` with ``meta``): train and val are required, test is optional."""
    splits = {}
    for name in SPLIT_FILES:
        path = root / SPLIT_DIRS[meta] / f"{name}.txt"
        if not path.is_file():
            if name == "test":
                continue
            raise DataError(f"{path}: file not found; expected the {name} ids of the NYUD_MT layout, one a line")
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; expected one sample id a line") from None
        if not ids:
            raise DataError(f"{path}: no ids; expected one sample id a line")
        splits[name] = ids
    return splits


class Source:
    """Reads NYUD_MT samples: the image and the files of the requested tasks."""

    def __init__(self, root: Path, tasks: Sequence[str]) -> None:
        self.root = Path(root)
        self.tasks = tuple(tasks)

    def _path(self, field: str, key: str) -> Path:
        if field == IMAGE:
            return self.root / "images" / f"{key}.jpg"
        folder, suffix = _TASK_FILES[field]
        return self.root / folder / f"{key}{suffix}"

    def files(self, key: str) -> list[Path]:
        return [self._path(field, key) for field in (IMAGE, *self.tasks)]

    def read(self, key: str) -> Fields:
        path = self._path(IMAGE, key)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"{path}: cannot decode; expected a JPEG image")
        fields = {IMAGE: image_tensor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path)}
        size = bgr.shape[:2]
        for task in self.tasks:
            path = self._path(task, key)
            fields[task] = _segmentation(path, size) if task == SEGMENTATION else _NPY_READERS[task](load_npy(path), path, size)
        return fields


def _segmentation(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """png 0 = void -> 255; classes 1..40 -> train ids 0..39."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise DataError(f"{path}: cannot decode as a single-channel label png; expected uint8 values 0..{NUM_CLASSES}")
    if labels.max(initial=0) > NUM_CLASSES:
        raise DataError(f"{path}: label {labels.max()} found; expected values 0 (void) .. {NUM_CLASSES}")
    train_ids = np.where(labels == 0, IGNORE_INDEX, labels.astype(np.int64) - 1)
    return segmentation_tensor(train_ids, path, size)


_NPY_READERS = {DEPTH: depth_tensor, NORMALS: normals_tensor, EDGE: edge_tensor}
