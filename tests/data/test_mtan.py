"""MTAN-layout loading through data.build: encodings, splits, unavailable tasks, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from data.synthetic import make_mtan
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import ConfigError, DataError

TASKS = ["segmentsemantic", "depth_euclidean", "surface_normal"]


def load(root: Path, key: str, folder: str) -> np.ndarray:
    """The array of sample `key` ("<split>/<i>") in `folder` (image, label, depth, normal)."""
    split, number = key.split("/")
    return np.load(root / split / folder / f"{number}.npy")


def test_describe_detects_mtan(mtan_root: Path, make_cfg) -> None:
    info = data.describe(make_cfg(mtan_root, task_list=TASKS))
    assert (info.layout, info.num_seg_classes) == ("mtan", 13)


def test_samples_carry_the_contract_encodings(mtan_root: Path, make_cfg) -> None:
    test = data.build(make_cfg(mtan_root, task_list=TASKS)).test
    assert test.keys == ["val/0", "val/1"]
    saw_ignore = False
    for index, key in enumerate(test.keys):
        sample = test[index]
        label, depth, normal = (load(mtan_root, key, folder) for folder in ("label", "depth", "normal"))
        targets = sample["targets"]
        image = sample["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), load(mtan_root, key, "image"), atol=0.5 / 255 + 1e-5)
        assert targets["segmentsemantic"].dtype == torch.int64
        np.testing.assert_array_equal(targets["segmentsemantic"].numpy(), np.where(label < 0, 255, label).astype(np.int64))
        saw_ignore |= bool((label == -1).any())
        assert targets["depth_euclidean"].shape == (1, 24, 32)
        np.testing.assert_array_equal(targets["depth_euclidean"][0].numpy(), depth[..., 0])
        invalid = ~normal.any(axis=-1)
        assert (targets["surface_normal"].permute(1, 2, 0).numpy()[invalid] == 0).all()
    assert saw_ignore


def test_val_folder_becomes_test_and_a_tenth_of_train_validates(mtan_root: Path, make_cfg) -> None:
    splits = data.build(make_cfg(mtan_root, task_list=TASKS))
    train = [f"train/{i}" for i in range(10)]
    assert len(splits.val) == 1 and sorted(splits.train.keys + splits.val.keys) == sorted(train)
    assert not set(splits.train.keys) & set(splits.val.keys)


def test_a_test_folder_is_used_as_given(tmp_path: Path, make_cfg) -> None:
    root = make_mtan(tmp_path / "m", num_images=8, height=8, width=12, test_fraction=0.25)
    splits = data.build(make_cfg(root, task_list=TASKS, input_shape=[8, 12]))
    assert [len(s) for s in splits] == [4, 2, 2] and splits.test.keys == ["test/0", "test/1"]


def test_edge_task_is_a_config_error(mtan_root: Path, make_cfg) -> None:
    cfg = make_cfg(mtan_root, task_list=["segmentsemantic", "edge_texture"])
    for call in (data.describe, data.build):
        with pytest.raises(ConfigError, match=r"edge_texture.*mtan"):
            call(cfg)


def test_label_out_of_range_names_the_file(mtan_root: Path, tmp_path: Path, make_cfg) -> None:
    root = Path(shutil.copytree(mtan_root, tmp_path / "copy"))
    victim = root / "val" / "label" / "1.npy"
    np.save(victim, np.full((24, 32), 13, dtype=np.float32))
    with pytest.raises(DataError, match=f"{re.escape(str(victim))}.*expected -1"):
        data.build(make_cfg(root, task_list=["segmentsemantic"], setup="singletask"))
