"""The study's formatted CelebAMask-HQ (REFERENCE §3) as train/val/test datasets.

Layout read, under ``cfg.data_dir`` (``data_dir_celebA``): ``CelebA-HQ-img/<n>.jpg``,
``CelebA-HQ-segmask/<n:05d>_mask.npy`` (0 background, 1 hair, 2 face), the attribute file and
the split file ``celebA_datasplit.json`` (``python -m data.prepare_celeba`` writes all four).
Images and masks go through the same decode-once cache and joint transforms as NYU-v2
(:class:`data.cache.DenseDataset`); the attribute labels, one number per image, are added to
each sample's targets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data import preflight
from data.cache import (
    CACHE_BUDGET_BYTES,
    DenseDataset,
    image_tensor,
    segmentation_tensor,
)
from data.celeba_format import (
    ATTRIBUTE_FILE,
    CELEBA_ATTRIBUTES,
    CELEBA_TASK_ALIASES,
    DEFAULT_SPLIT_SEED,
    IMAGE_DIR,
    SEG_CLASSES,
    SEGMASK_DIR,
    SPLIT_FILE,
    SPLIT_NAMES,
    AttributeTable,
    celeba_attribute,
    index_of,
    read_attributes,
    seeded_split,
    segmask_name,
)
from data.datasets import DatasetInfo, Splits
from data.files import load_npy, read_color
from data.transforms import IMAGE, SEGMENTATION, Fields, ImageNormalization
from utils.config import ExperimentConfig
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAME = "celeba"
#: Where the study's code kept its split file, relative to the folder it ran in.
STUDY_SPLIT_DIR = "dataset"


def describe(cfg: ExperimentConfig) -> DatasetInfo:
    """What the engine needs before building anything: layout, 3 classes, the root."""
    return DatasetInfo(layout=NAME, num_seg_classes=len(SEG_CLASSES), root=_root(cfg))


class Checked(NamedTuple):
    """The formatted folder as the pre-flight found it: what ``build`` decodes."""

    root: Path
    split: dict[str, list[str]]
    table: AttributeTable | None
    bad: preflight.BadSamples


def check(cfg: ExperimentConfig) -> Checked:
    """The folder, its split (cut to ``celebA_subset``), attribute table and bad samples, checked by
    the pre-flight before any decoding (``data.check``)."""
    root = _root(cfg)
    split = read_split(cfg, root)
    if cfg.celebA_subset == "first_third":
        split = {name: files[: len(files) // 3] for name, files in split.items()}
        log.info("celebA_subset first_third: using the first third of each split (%s), as the study did",
                 ", ".join(f"{len(files)} {name}" for name, files in split.items()))
    table = read_attributes(root / ATTRIBUTE_FILE) if attribute_tasks(cfg.task_list) else None
    source = Source(root, with_mask=SEGMENTATION in cfg.task_list, num_classes=cfg.num_seg_classes)
    checks = [_rows_check(table, root / ATTRIBUTE_FILE)] if table is not None else []
    return Checked(root, split, table, preflight.check(source, split, skip_bad=cfg.skip_bad_samples, checks=checks))


def build(cfg: ExperimentConfig) -> Splits:
    """The train/val/test datasets of ``cfg``; only train is augmented (``cfg.augmentation``).

    With ``celebA_subset: first_third`` (the study's ``create_dataset.py``: ``len(split) // 3``
    samples, the first ones) each split is cut to its first third. The splits share one cache
    budget, as NYU-v2's do; a split over it reads files on access."""
    root, split, table, bad = check(cfg)
    budget = CACHE_BUDGET_BYTES
    datasets = []
    for name in SPLIT_NAMES:
        dataset = CelebAMaskHQ(
            root, split[name], cfg.task_list, image_size=cfg.image_size, attributes=table,
            augment=cfg.augmentation and name == "train", image_normalization=cfg.image_normalization,
            cache_budget=budget, name=name, num_seg_classes=cfg.num_seg_classes,
            skip_bad=cfg.skip_bad_samples, bad=bad[name],
        )
        budget -= dataset.cached_bytes
        datasets.append(dataset)
    return Splits(*datasets)


def _rows_check(table: AttributeTable, path: Path) -> preflight.SampleCheck:
    """The pre-flight check that every image of the splits has a row in the attribute file."""

    def run(split: Mapping[str, Sequence[str]]) -> tuple[list[preflight.Problem], Callable[[int], str]]:
        problems = [
            (name, file, f"{path}: no row for {file} (an image of the {name} split); expected one row per image")
            for name, files in split.items() for file in files if file not in table.rows
        ]
        total = sum(len(files) for files in split.values())
        return problems, lambda count: f"{count} of the {total} images of the splits have none"

    return run


def attribute_tasks(tasks: Sequence[str]) -> dict[str, str]:
    """Each attribute task of ``tasks`` with its attribute; ConfigError for one CelebA lacks."""
    attributes = {}
    for task in tasks:
        if task == SEGMENTATION:
            continue
        attribute = celeba_attribute(task)
        if attribute is None:
            raise ConfigError(
                f"config key 'task_list': unknown celebA task {task!r}; expected '{SEGMENTATION}', "
                f"{sorted(CELEBA_TASK_ALIASES)} or class_<Attribute> with Attribute in {list(CELEBA_ATTRIBUTES)}"
            )
        attributes[task] = attribute
    return attributes


def read_split(cfg: ExperimentConfig, root: Path) -> dict[str, list[str]]:
    """The split file of ``celebA_split_file``, by default ``<root>/celebA_datasplit.json`` or, as the
    study kept it in its code folder, ``dataset/celebA_datasplit.json``.

    Without one, the images present are split 80/10/10 with the seed ``prepare_celeba`` uses
    by default, so both give the same split. The trial seed is deliberately not used: every
    trial must see the same test set."""
    if cfg.celebA_split_file:
        path = Path(cfg.celebA_split_file).expanduser()
        if not path.is_file():
            raise DataError(f"config key 'celebA_split_file': '{path}' not found; expected a JSON file of train/val/test lists")
        return _parse_split(path)
    for path in (root / SPLIT_FILE, Path(STUDY_SPLIT_DIR) / SPLIT_FILE):
        if path.is_file():
            log.info("CelebA split: %s", path)
            return _parse_split(path)
    files = [image.name for image in (root / IMAGE_DIR).glob("*.jpg") if image.stem.isdigit()]
    if not files:
        raise DataError(f"'{root / IMAGE_DIR}' holds no <n>.jpg images; expected the formatted CelebAMask-HQ layout")
    log.info(
        "no %s in %s: using a seeded 80/10/10 split (seed %d) of its %d images", SPLIT_FILE, root, DEFAULT_SPLIT_SEED, len(files)
    )
    return seeded_split(files, DEFAULT_SPLIT_SEED)


def _parse_split(path: Path) -> dict[str, list[str]]:
    """The split JSON; one line naming the file for anything but three disjoint lists of unique ``<n>.jpg``."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"split file '{path}' is not readable JSON ({error})") from None
    if not isinstance(split, dict) or any(
        not isinstance(split.get(name), list) or not all(isinstance(file, str) for file in split[name]) for name in SPLIT_NAMES
    ):
        raise DataError(f"split file '{path}': expected {{\"train\": [\"<n>.jpg\", ...], \"val\": [...], \"test\": [...]}}")
    for name in SPLIT_NAMES:
        seen: set[str] = set()
        for position, file in enumerate(split[name]):
            try:
                index_of(file)
            except DataError as error:
                raise DataError(f"split file '{path}': {name}[{position}]: {error}") from None
            if file in seen:
                raise DataError(f"split file '{path}': {name}[{position}]: '{file}' repeats; expected each image once")
            seen.add(file)
    split = {name: split[name] for name in SPLIT_NAMES}
    preflight.check_disjoint(split, {name: f"split file '{path}' ({name})" for name in SPLIT_NAMES})
    return split


def _root(cfg: ExperimentConfig) -> Path:
    root = cfg.data_dir
    if not root.is_dir():
        raise DataError(f"config key 'data_dir_celebA': '{root}' is not a folder; expected the formatted CelebAMask-HQ copy")
    return root


class Source:
    """Reads one formatted image (and its mask when segmentation is a task), strictly, for DenseDataset.

    ``num_classes`` (the config's ``num_seg_classes``) bounds the mask values (`ConfigError`)."""

    def __init__(self, root: Path, *, with_mask: bool, num_classes: int | None = None) -> None:
        self.root = Path(root)
        self.tasks = (SEGMENTATION,) if with_mask else ()
        self.num_classes = num_classes
        self._image_dir, self._mask_dir = self.root / IMAGE_DIR, self.root / SEGMASK_DIR

    def files(self, key: str) -> list[Path]:
        return [folder / name for folder, name in self.file_names(key)]

    def file_names(self, key: str) -> list[tuple[Path, str]]:
        image = (self._image_dir, key)
        return [image, (self._mask_dir, segmask_name(index_of(key)))] if self.tasks else [image]

    def read(self, key: str) -> Fields:
        paths = self.files(key)
        bgr = read_color(paths[0])
        fields = {IMAGE: image_tensor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), paths[0])}
        if self.tasks:
            fields[SEGMENTATION] = _mask(paths[1], bgr.shape[:2], self.num_classes)
        return fields


def _mask(path: Path, size: tuple[int, int], num_classes: int | None = None) -> torch.Tensor:
    """The 3-class mask at the image's size (copies whose masks kept another size are resized).

    Values are 0..2, or 255 (ignored, as in some re-saved copies); anything else, NaN included,
    is a DataError naming the file."""
    mask = load_npy(path)
    if mask.ndim != 2:
        raise DataError(f"{path}: array of shape {mask.shape}; expected an H x W mask")
    expected = f"expected classes 0..{len(SEG_CLASSES) - 1} ({', '.join(SEG_CLASSES)}) or {IGNORE_INDEX} (ignore)"
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise DataError(f"{path}: non-finite values (NaN/Inf); {expected}")
    wrong = ((mask >= len(SEG_CLASSES)) & (mask != IGNORE_INDEX)) | (mask < 0)
    if mask.dtype.kind == "f":
        wrong |= mask != np.rint(mask)
    if wrong.any():
        shown = ", ".join(f"{value:g}" for value in np.unique(mask[wrong])[:5])
        raise DataError(f"{path}: {np.count_nonzero(wrong)} pixels with values {shown}; {expected}")
    mask = mask.astype(np.uint8)
    top = int(mask[mask != IGNORE_INDEX].max(initial=0)) if num_classes is not None else 0
    if num_classes is not None and top >= num_classes:
        raise ConfigError(
            f"config key 'num_seg_classes': {num_classes}, but {path} holds class {top}; "
            f"expected num_seg_classes: {len(SEG_CLASSES)} for CelebAMask-HQ masks"
        )
    if mask.shape != size:
        mask = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)
    return segmentation_tensor(mask, path, size)


class CelebAMaskHQ(Dataset):
    """One split: samples ``{"image": 3×H×W float32, "targets": {task: tensor}}`` (docs/contracts.md),
    ``segmentsemantic`` int64 H×W, ``class_<attr>`` float32 0-d (0. or 1.).

    ``skip_bad`` and ``bad`` skip bad samples as `DenseDataset` does; ``files`` is then the good
    ones, and the attribute labels follow them."""

    def __init__(
        self,
        root: Path,
        files: Sequence[str],
        tasks: Sequence[str],
        *,
        image_size: Sequence[int],
        attributes: AttributeTable | None = None,
        augment: bool = False,
        image_normalization: ImageNormalization = "none",
        cache_budget: int = CACHE_BUDGET_BYTES,
        name: str = "celeba",
        num_seg_classes: int | None = None,
        skip_bad: bool = False,
        bad: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.tasks = list(tasks)
        attribute_tasks(self.tasks)  # unknown task names fail before any decoding
        self._images = DenseDataset(
            Source(self.root, with_mask=SEGMENTATION in self.tasks, num_classes=num_seg_classes), files,
            size=image_size, augment=augment, image_normalization=image_normalization, cache_budget=cache_budget, name=name,
            skip_bad=skip_bad, bad=bad,
        )
        self.files = list(self._images.keys)  # without the skipped ones (skip_bad)
        self._labels = self._read_labels(attributes)

    @property
    def cached_bytes(self) -> int:
        """Bytes the decoded images and masks hold in memory (0 when read on access)."""
        return self._images.cached_bytes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self._images[index]
        dense = sample["targets"]
        labels = {task: torch.tensor(values[index]) for task, values in self._labels.items()}
        sample["targets"] = {task: dense[task] if task in dense else labels[task] for task in self.tasks}
        return sample

    def positive_rate(self, task: str) -> float:
        """The share of positives of an attribute task on this split (for class balancing)."""
        if task not in self._labels:
            raise ConfigError(
                f"positive_rate: {task!r} is not an attribute task of this dataset; expected one of {sorted(self._labels)}"
            )
        labels = self._labels[task]
        return float(labels.mean()) if len(labels) else 0.0

    def _read_labels(self, table: AttributeTable | None) -> dict[str, np.ndarray]:
        """0/1 float32 labels of every attribute task, in the split's order."""
        wanted = attribute_tasks(self.tasks)
        if not wanted:
            return {}
        path = self.root / ATTRIBUTE_FILE
        table = read_attributes(path) if table is None else table
        for task, attribute in wanted.items():
            if attribute not in table.names:
                raise DataError(f"{path}: no column '{attribute}' (task {task}); the file has {list(table.names)}")
        missing = [file for file in self.files if file not in table.rows]
        if missing:
            raise DataError(f"{path}: no row for {missing[0]} ({len(missing)} files of the split have none)")
        return {task: table.positives(attribute, self.files) for task, attribute in wanted.items()}
