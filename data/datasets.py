"""Config -> datasets and loaders: which dataset module, which NYU layout, which splits.

``dataset_name`` picks a dataset from a small registry (CelebA's module is imported only when
asked for). NYU-v2 comes in two layouts, told apart by their folders: NYUD_MT (``images/`` +
``gt_sets/``) and MTAN (``train/image/``). When a release has no test split, a fixed 10 % of
train (the same for every trial) becomes validation and the release's val split is the test.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data import mtan, nyud, preflight
from data.cache import CACHE_BUDGET_BYTES, DenseDataset, Source
from utils.config import ExperimentConfig, SyntheticConfig
from utils.errors import ConfigError, DataError
from utils.io import folder_problem

log = logging.getLogger(__name__)

#: Seeds the validation hold-out; fixed, not the trial seed, so all trials share one split.
SPLIT_SEED = 0
HOLDOUT_FRACTION = 0.1

_LAYOUTS: dict[str, ModuleType] = {nyud.NAME: nyud, mtan.NAME: mtan}


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the project needs to know before loading anything."""

    layout: str  # "nyud" | "mtan" | "celeba"
    num_seg_classes: int
    root: Path


class Splits(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset


class _DatasetEntry(NamedTuple):
    describe: Callable[[ExperimentConfig], DatasetInfo]
    check: Callable[[ExperimentConfig], object]
    build: Callable[[ExperimentConfig], Splits]


def describe(cfg: ExperimentConfig) -> DatasetInfo:
    """Layout, number of classes and root of the configured dataset, without decoding data."""
    return _entry(cfg).describe(cfg)


#: The config keys that decide what ``build`` returns; configs equal in these share their datasets.
DATA_KEYS = ("dataset_name", "data_dir_NYU", "data_dir_celebA", "task_list", "input_shape", "augmentation",
             "depth_normalization", "image_normalization", "meta", "celebA_subset", "celebA_split_file", "synthetic",
             "num_seg_classes", "skip_bad_samples")


def data_key(cfg: ExperimentConfig) -> tuple:
    """What the datasets of ``cfg`` depend on: experiments (λ values, trials) equal in it decode their data once."""
    return tuple(repr(getattr(cfg, key)) for key in DATA_KEYS)


def check(cfg: ExperimentConfig) -> None:
    """What ``build`` checks before decoding (the folder, the splits, the pre-flight's sample; a
    synthetic set is generated), without decoding: a launcher runs it once before submitting jobs,
    so a broken folder fails in a second rather than in every job."""
    _entry(cfg).check(cfg)


def build(cfg: ExperimentConfig) -> Splits:
    """Train, val and test datasets of the configured dataset (train augmented if asked).

    Every user-fixable problem of the data is one `DataError` line naming the file (`ConfigError`
    naming the key): `data.preflight` checks the folder before any decoding, the cache decodes
    strictly. With ``skip_bad_samples`` bad samples are skipped and counted instead."""
    return _entry(cfg).build(cfg)


def loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    persistent_workers: bool = False,
) -> DataLoader:
    """A reproducible DataLoader: shuffling and worker RNGs derive from `seed`.

    Workers seed torch (and numpy, random) from the loader's generator, so augmentation is
    deterministic; with ``num_workers=0`` it draws from the main process's torch RNG instead.
    Workers are capped at the CPUs this process may use (the study's 8 would oversubscribe a
    small machine). A ``sampler`` (one process's share under torchrun) replaces ``shuffle``.
    ``persistent_workers`` keeps the workers between epochs (faster, but their random state then
    carries over, so a resumed run is no longer bit-exact).
    Batches are pinned for non-blocking copies when CUDA is there.
    """
    num_workers = min(num_workers, len(os.sched_getaffinity(0)))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def _seed_worker(worker_id: int) -> None:
    """DataLoader seeds torch per worker; give numpy and random (used by third-party transforms) the same."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def holdout(keys: Sequence[str], *, fraction: float = HOLDOUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """Split `keys` into (kept, held out) with round(fraction * n) (at least one) held out.

    The choice hashes each key with `seed`, so it does not depend on the keys' order.
    """
    count = max(1, round(fraction * len(keys)))
    ranked = sorted(keys, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).digest())
    held = set(ranked[:count])
    return [k for k in keys if k not in held], [k for k in keys if k in held]


def _lazy(module: str, function: str) -> Callable:
    """Call `module.function` importing the module on first use (its dependencies load only then)."""

    def call(cfg: ExperimentConfig):
        return getattr(importlib.import_module(module), function)(cfg)

    return call


def _entry(cfg: ExperimentConfig) -> _DatasetEntry:
    try:
        return _DATASETS[cfg.dataset_name]
    except KeyError:
        raise ConfigError(f"config key 'dataset_name': unknown {cfg.dataset_name!r}; expected one of {sorted(_DATASETS)}") from None


def _find_layout(root: Path) -> ModuleType | None:
    return next((layout for layout in _LAYOUTS.values() if layout.detect(root)), None)


def _nyu_layout(cfg: ExperimentConfig) -> ModuleType:
    """The layout of the NYU folder, after checking that it holds every task asked for."""
    root = cfg.data_dir
    if not root.is_dir():
        raise DataError(
            f"config key 'data_dir_{cfg.dataset_name}': folder '{root}' not found; "
            "expected a NYU-v2 dataset folder (or set 'synthetic' to generate one)"
        )
    layout = _find_layout(root)
    if layout is None:
        raise DataError(
            f"{root}: no known NYU-v2 layout; expected NYUD_MT (images/ and gt_sets/) or MTAN (train/image/ and val/image/)"
        )
    _check_tasks(layout, cfg.task_list, root)
    return layout


def _check_tasks(layout: ModuleType, tasks: Sequence[str], root: Path) -> None:
    missing = [task for task in tasks if task not in layout.TASKS]
    if missing:
        raise ConfigError(
            f"config key 'task_list': {missing} not available in the {layout.NAME} layout at {root}; "
            f"expected tasks among {list(layout.TASKS)}"
        )


def _describe_nyu(cfg: ExperimentConfig) -> DatasetInfo:
    root = cfg.data_dir
    if cfg.synthetic is not None and _find_layout(root) is None:
        _check_synthetic(cfg.synthetic)
        _check_tasks(nyud, cfg.task_list, root)
        return DatasetInfo(nyud.NAME, nyud.NUM_CLASSES, root)  # what _ensure_synthetic will write
    layout = _nyu_layout(cfg)
    return DatasetInfo(layout.NAME, layout.NUM_CLASSES, root)


def _check_nyu(cfg: ExperimentConfig) -> tuple[Source, dict[str, list[str]], preflight.BadSamples]:
    """The NYU folder's reader, split ids and bad samples, checked by the pre-flight (a synthetic set
    is generated first); nothing decoded beyond the pre-flight's sample."""
    root = cfg.data_dir
    if cfg.synthetic is not None:
        _ensure_synthetic(root, cfg.synthetic, key=f"data_dir_{cfg.dataset_name}")
    layout = _nyu_layout(cfg)
    keys = _split_keys(layout, root, meta=cfg.meta)
    source = layout.Source(root, cfg.task_list, num_classes=cfg.num_seg_classes)
    return source, keys, preflight.check(source, keys, skip_bad=cfg.skip_bad_samples)


def _build_nyu(cfg: ExperimentConfig) -> Splits:
    source, keys, bad = _check_nyu(cfg)
    budget = CACHE_BUDGET_BYTES
    datasets = []
    for name in Splits._fields:
        dataset = DenseDataset(
            source, keys[name], size=cfg.image_size, augment=cfg.augmentation and name == "train",
            depth_normalization=cfg.depth_normalization, image_normalization=cfg.image_normalization,
            cache_budget=budget, name=name, skip_bad=cfg.skip_bad_samples, bad=bad[name],
        )
        budget -= dataset.cached_bytes
        datasets.append(dataset)
    return Splits(*datasets)


def _split_keys(layout: ModuleType, root: Path, *, meta: bool) -> dict[str, list[str]]:
    found = layout.find_splits(root, meta=meta)
    if "test" in found:
        log.info("%s: using its train / val / test splits (%d / %d / %d)", root, *(len(found[s]) for s in Splits._fields))
        return found
    if len(found["train"]) < 2:
        raise DataError(f"{root}: {len(found['train'])} train sample(s); expected at least 2 to hold out a validation split")
    train, val = holdout(found["train"])
    log.info(
        "%s: no test split; validating on a fixed %d %% of train (%d of %d, seed %d) and testing on val (%d)",
        root, round(HOLDOUT_FRACTION * 100), len(val), len(found["train"]), SPLIT_SEED, len(found["val"]),
    )
    return {"train": train, "val": val, "test": found["val"]}


def _check_synthetic(spec: SyntheticConfig) -> None:
    """ConfigError naming the ``synthetic`` key the generator cannot use, before anything is written.

    The set has no test split, so ``build`` holds out validation from train, and training needs
    batches of 2 (BatchNorm): train needs 3 images."""
    from data.synthetic import check_settings

    problem = check_settings(num_images=spec.num_images, height=spec.height, width=spec.width, seed=spec.seed, min_train=3)
    if problem is not None:
        raise ConfigError(f"config key 'synthetic.{problem[0]}': {problem[1]}")


def _read_marker(marker: Path, wanted: dict) -> object:
    """The settings a synthetic set was generated with; DataError naming the file if it is unreadable."""
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise DataError(
            f"{marker}: unreadable ({reason}); expected the JSON settings of the synthetic set, like "
            f"{json.dumps(wanted)} (delete the folder to regenerate it)"
        ) from None


def _ensure_synthetic(root: Path, spec: SyntheticConfig, *, key: str = "data_dir_NYU") -> None:
    """Generate the synthetic NYUD_MT set into `root` unless a dataset is there already.

    Generation goes to a temporary sibling folder renamed into place when complete, so an
    interrupted or failed run never leaves a half-written dataset (the temporary folder is
    removed) and concurrent runs do not collide. Bad settings and paths fail before any write.
    """
    from data.synthetic import (  # not at the top: `python -m data.synthetic` warns if `data` imported it
        SYNTHETIC_MARKER,
        make_nyud,
        stamp,
    )

    wanted = spec.model_dump()
    if _find_layout(root) is not None:
        marker = root / SYNTHETIC_MARKER
        if marker.is_file() and _read_marker(marker, wanted) != wanted:
            log.warning("%s holds a synthetic set generated with other settings than %s; delete it to regenerate", root, wanted)
        return
    _check_synthetic(spec)
    problem = folder_problem(root)
    if problem is not None:
        raise DataError(f"config key '{key}': cannot generate the synthetic set into '{root}': {problem}; expected a folder path to create")
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: exists but holds no NYU-v2 dataset; expected an empty or missing folder to generate the synthetic set into")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"config key '{key}': cannot create '{root.parent}' ({error.strerror or error}); expected a writable folder") from None
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    log.info("generating a synthetic NYUD_MT dataset %s in %s", wanted, root)
    try:
        make_nyud(partial, num_images=spec.num_images, height=spec.height, width=spec.width, seed=spec.seed)
        stamp(partial, wanted)
    except BaseException:  # Ctrl-C, a full disk, a bug: no partial folder stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.replace(root)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if _find_layout(root) is None:  # not a concurrent run that finished first
            raise DataError(
                f"config key '{key}': cannot move the generated synthetic set into '{root}' ({error.strerror or error}); "
                "expected an empty or missing folder"
            ) from None


_DATASETS: dict[str, _DatasetEntry] = {
    "NYU": _DatasetEntry(_describe_nyu, _check_nyu, _build_nyu),
    "celebA": _DatasetEntry(*(_lazy("data.celeba", function) for function in ("describe", "check", "build"))),
}
