"""NYUD_MT loading through data.build: encodings, resizing, splits, errors, caching, loaders."""

from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import data
from data.cache import DenseDataset
from data.datasets import holdout
from data.nyud import Source
from data.synthetic import SYNTHETIC_MARKER
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import ConfigError, DataError

TASKS = ["segmentsemantic", "depth_euclidean", "surface_normal", "edge_texture"]


def ids(root: Path, split: str) -> list[str]:
    return (root / "gt_sets" / f"{split}.txt").read_text().split()


def unnormalise(image: torch.Tensor) -> np.ndarray:
    """Sample image -> H x W x 3 uint8 RGB."""
    image = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def nyud_copy(nyud_root: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(nyud_root, tmp_path / "copy"))


def test_describe_detects_the_layout_without_decoding(nyud_root: Path, make_cfg) -> None:
    info = data.describe(make_cfg(nyud_root))
    assert (info.layout, info.num_seg_classes, info.root) == ("nyud", 40, nyud_root)


def test_samples_carry_the_contract_encodings(nyud_root: Path, make_cfg) -> None:
    splits = data.build(make_cfg(nyud_root))
    assert splits.test.keys == ids(nyud_root, "val")
    for index, key in enumerate(splits.test.keys):
        sample = splits.test[index]
        targets = sample["targets"]
        assert list(targets) == TASKS
        png = cv2.imread(str(nyud_root / "segmentation" / f"{key}.png"), cv2.IMREAD_UNCHANGED)
        depth = np.load(nyud_root / "depth" / f"{key}.npy")
        normals = np.load(nyud_root / "normals" / f"{key}.npy")
        rgb = cv2.cvtColor(cv2.imread(str(nyud_root / "images" / f"{key}.jpg")), cv2.COLOR_BGR2RGB)
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 24, 32)
        np.testing.assert_array_equal(unnormalise(sample["image"]), rgb)
        assert targets["segmentsemantic"].dtype == torch.int64
        np.testing.assert_array_equal(targets["segmentsemantic"].numpy(), np.where(png == 0, 255, png.astype(np.int64) - 1))
        assert (targets["segmentsemantic"] == 255).any() and (targets["segmentsemantic"] < 40).any()
        np.testing.assert_array_equal(targets["depth_euclidean"][0].numpy(), depth)
        invalid = ~normals.any(axis=-1)
        assert invalid.any() and (targets["surface_normal"].permute(1, 2, 0).numpy()[invalid] == 0).all()
        np.testing.assert_allclose(targets["surface_normal"].permute(1, 2, 0).numpy(), normals, atol=2e-3)
        np.testing.assert_allclose(targets["edge_texture"][0].numpy(), np.load(nyud_root / "edge" / f"{key}.npy"), atol=1e-3)


def test_only_the_listed_tasks_are_read(nyud_copy: Path, make_cfg) -> None:
    shutil.rmtree(nyud_copy / "normals")
    shutil.rmtree(nyud_copy / "edge")
    sample = data.build(make_cfg(nyud_copy, task_list=["depth_euclidean"], setup="singletask")).train[0]
    assert list(sample["targets"]) == ["depth_euclidean"]


@pytest.mark.parametrize(("input_shape", "size"), [([16, 20], (16, 20)), (20, (20, 20)), ([40, 52], (40, 52))])
def test_resize_to_input_shape_keeps_label_and_depth_values(nyud_root: Path, make_cfg, input_shape, size) -> None:
    splits = data.build(make_cfg(nyud_root, input_shape=input_shape))
    raw = data.build(make_cfg(nyud_root)).test
    for index in range(len(splits.test)):
        sample, native = splits.test[index], raw[index]
        targets, original = sample["targets"], native["targets"]
        assert sample["image"].shape == (3, *size)
        assert targets["segmentsemantic"].shape == size and targets["depth_euclidean"].shape == (1, *size)
        assert targets["surface_normal"].shape == (3, *size) and targets["edge_texture"].shape == (1, *size)
        assert set(targets["segmentsemantic"].unique().tolist()) <= set(original["segmentsemantic"].unique().tolist())
        assert set(targets["depth_euclidean"].unique().tolist()) <= set(original["depth_euclidean"].unique().tolist())
        length = targets["surface_normal"].norm(dim=0)
        assert torch.all(((length - 1).abs() < 1e-3) | (length == 0))


def test_without_test_file_a_fixed_tenth_of_train_validates(nyud_root: Path, make_cfg) -> None:
    first = data.build(make_cfg(nyud_root, seed=0))
    other_seed = data.build(make_cfg(nyud_root, seed=7))
    train_ids = ids(nyud_root, "train")
    assert len(first.val) == 1 and sorted(first.train.keys + first.val.keys) == sorted(train_ids)
    assert not set(first.train.keys) & set(first.val.keys)
    assert first.test.keys == ids(nyud_root, "val")
    assert (first.train.keys, first.val.keys) == (other_seed.train.keys, other_seed.val.keys)


def test_holdout_is_a_deterministic_order_free_tenth() -> None:
    keys = [f"{i:04d}" for i in range(200)]
    kept, held = holdout(keys)
    assert len(held) == 20 and sorted(kept + held) == keys
    _, held_shuffled = holdout(list(reversed(keys)))
    assert sorted(held_shuffled) == sorted(held)
    assert holdout(keys, seed=1)[1] != held


def test_test_file_is_used_as_given(nyud_with_test_root: Path, make_cfg) -> None:
    splits = data.build(make_cfg(nyud_with_test_root))
    assert [s.keys for s in splits] == [ids(nyud_with_test_root, s) for s in ("train", "val", "test")]


def test_augmentation_only_on_train(nyud_root: Path, make_cfg) -> None:
    splits = data.build(make_cfg(nyud_root, augmentation=True))
    assert (splits.train.augment, splits.val.augment, splits.test.augment) == (True, False, False)
    torch.manual_seed(0)
    samples = [splits.train[0]["targets"]["depth_euclidean"] for _ in range(8)]
    assert any(not torch.equal(s, samples[0]) for s in samples[1:])


def test_per_image_max_depth(nyud_root: Path, make_cfg) -> None:
    metres = data.build(make_cfg(nyud_root)).test
    scaled = data.build(make_cfg(nyud_root, depth_normalization="per_image_max")).test
    for index in range(len(scaled)):
        depth, original = scaled[index]["targets"]["depth_euclidean"], metres[index]["targets"]["depth_euclidean"]
        assert depth.max() == 1.0
        torch.testing.assert_close(depth, original / original.max())


def test_decoding_on_access_gives_the_cached_samples(nyud_root: Path) -> None:
    source = Source(nyud_root, TASKS)
    keys = ids(nyud_root, "train")
    cached = DenseDataset(source, keys, size=(20, 28))
    lazy = DenseDataset(source, keys, size=(20, 28), cache_budget=0)
    assert cached.cached_bytes > 0 and lazy.cached_bytes == 0
    for index in (0, len(keys) - 1):
        a, b = cached[index], lazy[index]
        assert torch.equal(a["image"], b["image"])
        assert all(torch.equal(a["targets"][t], b["targets"][t]) for t in TASKS)


def test_missing_folder_names_the_config_key(tmp_path: Path, make_cfg) -> None:
    with pytest.raises(DataError, match=f"data_dir_NYU.*{re.escape(str(tmp_path / 'absent'))}"):
        data.build(make_cfg(tmp_path / "absent"))


def test_unknown_layout_names_both_expected_layouts(tmp_path: Path, make_cfg) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"NYUD_MT.*MTAN"):
        data.describe(make_cfg(tmp_path))


def test_missing_file_is_named(nyud_copy: Path, make_cfg) -> None:
    victim = nyud_copy / "segmentation" / f"{ids(nyud_copy, 'val')[1]}.png"
    victim.unlink()
    with pytest.raises(DataError, match=re.escape(str(victim))):
        data.build(make_cfg(nyud_copy))


def test_missing_split_file_is_named(nyud_copy: Path, make_cfg) -> None:
    (nyud_copy / "gt_sets" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt"):
        data.build(make_cfg(nyud_copy))


def test_synthetic_set_is_generated_once_into_the_data_folder(tmp_path: Path, make_cfg) -> None:
    root = tmp_path / "nested" / "synthetic"
    cfg = make_cfg(root, input_shape=[12, 16], synthetic={"num_images": 6, "height": 12, "width": 16, "seed": 3})
    assert data.describe(cfg).layout == "nyud" and not root.exists()
    splits = data.build(cfg)
    assert sum(len(s) for s in splits) == 6 and (root / SYNTHETIC_MARKER).is_file()
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic"], "no partial folder left behind"
    stamp = (root / "depth" / "0000.npy").stat().st_mtime_ns
    data.build(cfg)
    assert (root / "depth" / "0000.npy").stat().st_mtime_ns == stamp


def test_synthetic_refuses_a_folder_with_other_files(tmp_path: Path, make_cfg) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no NYU-v2 dataset"):
        data.build(make_cfg(tmp_path, synthetic={"num_images": 4}))


@pytest.mark.parametrize(("synthetic", "message"), [
    ({"num_images": 1}, r"config key 'synthetic\.num_images': 1 is too few; expected at least 4 \(3 train, 1 val\)"),
    ({"num_images": 3}, r"config key 'synthetic\.num_images': 3 is too few"),
    ({"num_images": 2}, r"config key 'synthetic\.num_images': 2 is too few"),
])
def test_unusable_synthetic_settings_are_a_config_error_leaving_nothing(
    synthetic: dict, message: str, tmp_path: Path, make_cfg,
) -> None:
    cfg = make_cfg(tmp_path / "nested" / "syn", input_shape=[12, 16], synthetic={"height": 12, "width": 16, **synthetic})
    for call in (data.describe, data.build):
        with pytest.raises(ConfigError, match=message):
            call(cfg)
    assert list(tmp_path.iterdir()) == [], "no (partial) folder left behind"


def test_smallest_synthetic_set_builds(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(tmp_path / "syn", input_shape=[12, 16], synthetic={"num_images": 4, "height": 12, "width": 16})
    assert [len(split) for split in data.build(cfg)] == [2, 1, 1]  # two to train on: BatchNorm needs batches of 2


def test_synthetic_data_dir_under_a_file_is_one_line(tmp_path: Path, make_cfg) -> None:
    (tmp_path / "cfg.yaml").write_text("mine")
    root = tmp_path / "cfg.yaml" / "syn"
    with pytest.raises(DataError) as raised:
        data.build(make_cfg(root, synthetic={"num_images": 4, "height": 12, "width": 16}))
    message = str(raised.value)
    assert "\n" not in message and "data_dir_NYU" in message and str(root) in message, message
    assert f"its parent '{tmp_path / 'cfg.yaml'}' exists and is not a folder; expected" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_corrupt_synthetic_marker_is_a_data_error_naming_it(tmp_path: Path, make_cfg) -> None:
    root = tmp_path / "syn"
    cfg = make_cfg(root, input_shape=[12, 16], synthetic={"num_images": 4, "height": 12, "width": 16})
    data.build(cfg)
    (root / SYNTHETIC_MARKER).write_text("{bad")
    with pytest.raises(DataError, match=re.escape(str(root / SYNTHETIC_MARKER)) + r": unreadable \(.*\); expected the JSON settings"):
        data.build(cfg)


def test_failed_synthetic_generation_leaves_no_partial_folder(tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import data.synthetic

    def broken(root: Path, **_: object) -> Path:
        (Path(root) / "images").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(data.synthetic, "make_nyud", broken)
    with pytest.raises(KeyboardInterrupt):
        data.build(make_cfg(tmp_path / "syn", synthetic={"num_images": 4, "height": 12, "width": 16}))
    assert list(tmp_path.iterdir()) == []


def batches(loader) -> list[torch.Tensor]:
    return [torch.cat([batch["image"].flatten(), batch["targets"]["depth_euclidean"].flatten()]) for batch in loader]


def test_loader_is_reproducible_with_a_seed(nyud_root: Path, make_cfg) -> None:
    train = data.build(make_cfg(nyud_root, augmentation=True)).train
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(0)
        runs.append(batches(data.loader(train, batch_size=4, shuffle=True, num_workers=0, seed=seed)))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_worker_augmentation_is_reproducible_with_a_seed(nyud_root: Path, make_cfg) -> None:
    train = data.build(make_cfg(nyud_root, augmentation=True)).train
    runs = []
    for torch_seed in (0, 1):  # the main process's RNG must not matter with workers
        torch.manual_seed(torch_seed)
        loader = data.loader(train, batch_size=5, shuffle=False, num_workers=1, seed=3, drop_last=True)
        runs.append(batches(loader))
    assert len(runs[0]) == 1 and torch.equal(runs[0][0], runs[1][0])


def test_celeba_dispatches_to_its_module_lazily(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_cfg) -> None:
    fake = types.ModuleType("data.celeba")
    fake.describe = lambda cfg: ("described", cfg.dataset_name)
    fake.build = lambda cfg: ("built", cfg.dataset_name)
    monkeypatch.setitem(sys.modules, "data.celeba", fake)
    cfg = make_cfg(tmp_path, dataset_name="celebA", task_list=["segmentsemantic"], data_dir_celebA=str(tmp_path))
    assert data.describe(cfg) == ("described", "celebA") and data.build(cfg) == ("built", "celebA")


def test_meta_selects_the_meta_gt_sets_folder(nyud_copy: Path, make_cfg) -> None:
    """The study's saved configs carry 'meta'; with it set, its loader read meta_gt_sets/."""
    meta = nyud_copy / "meta_gt_sets"
    meta.mkdir()
    train = (nyud_copy / "gt_sets" / "train.txt").read_text().split()
    (meta / "train.txt").write_text("\n".join(train[:4]) + "\n")
    (meta / "val.txt").write_text((nyud_copy / "gt_sets" / "val.txt").read_text())
    (meta / "test.txt").write_text("\n".join(train[4:6]) + "\n")
    splits = data.build(make_cfg(nyud_copy, meta=True))
    assert splits.train.keys == train[:4] and splits.test.keys == train[4:6]
    assert len(data.build(make_cfg(nyud_copy)).train) > 4  # meta: false (the default) keeps gt_sets/


def test_the_studys_defaults_give_unit_pixels_and_per_image_max_depth(nyud_root: Path, make_cfg) -> None:
    cfg = make_cfg(nyud_root, image_normalization="none", depth_normalization="per_image_max")
    sample = data.build(cfg).train[0]
    image, depth = sample["image"], sample["targets"]["depth_euclidean"]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0  # ToTensor, no ImageNet statistics
    assert float(depth.max()) == pytest.approx(1.0) and float(depth.min()) == 0.0  # invalid pixels stay 0
