"""The formatted CelebAMask-HQ loader: attribute parsing, samples, split file, attribute tasks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data import celeba
from data.celeba import CelebAMaskHQ
from data.celeba_format import CELEBA_ATTRIBUTES
from data.prepare_celeba import ATTRIBUTE_FILE, SPLIT_FILE, prepare, read_attributes
from data.synthetic_faces import make_celeba_raw
from utils.config import load, validate
from utils.errors import ConfigError, DataError

TASKS = ["segmentsemantic", "class_male", "class_Eyeglasses"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = make_celeba_raw(tmp_path_factory.mktemp("raw"), num_images=20, image_size=48, mask_size=24)
    out = tmp_path_factory.mktemp("formatted")
    prepare(raw, out, size=24, workers=1, progress=False)
    return out


def config(root: Path, **keys):
    return validate({
        "Experiment_name": "celeba_test", "dataset_name": "celebA", "task_list": TASKS,
        "input_shape": 16, "data_dir_celebA": str(root), "celebA_subset": "all", "image_normalization": "imagenet", **keys,
    })


def test_attribute_file_with_variable_spacing(tmp_path: Path) -> None:
    path = tmp_path / ATTRIBUTE_FILE
    path.write_text("2\nMale  Smiling \n0.jpg  1 -1\n\n1.jpg -1\t 1\n")
    table = read_attributes(path)
    assert table.names == ("Male", "Smiling") and table.rows == {"0.jpg": (1, -1), "1.jpg": (-1, 1)}
    assert table.positives("Smiling", ["1.jpg", "0.jpg"]).tolist() == [1.0, 0.0]
    path.write_text("Male Smiling\n0.jpg 1 -1\n")  # re-saved copies without the count line
    assert read_attributes(path).rows == {"0.jpg": (1, -1)}
    path.write_text("1\nMale Smiling\n0.jpg 1\n")
    with pytest.raises(DataError, match=rf"{ATTRIBUTE_FILE}:3: expected a file name and 2 values"):
        read_attributes(path)
    path.write_text("1\nMale Smiling\n0.jpg 1 0\n")
    with pytest.raises(DataError, match="must be 1 or -1"):
        read_attributes(path)


def test_describe_is_cheap_and_says_three_classes(root: Path) -> None:
    info = celeba.describe(config(root))
    assert (info.layout, info.num_seg_classes, info.root) == ("celeba", 3, root)
    with pytest.raises(DataError, match="data_dir_celebA"):
        celeba.describe(config(root / "missing"))


def test_samples_have_the_contract_shapes_and_labels(root: Path) -> None:
    splits = celeba.build(config(root))
    assert [len(split) for split in splits] == [16, 2, 2]
    sample = splits.train[0]
    image, targets = sample["image"], sample["targets"]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16) and image.min() < 0 < image.max()
    assert list(targets) == TASKS
    assert targets["segmentsemantic"].dtype == torch.int64 and targets["segmentsemantic"].shape == (16, 16)
    assert set(targets["segmentsemantic"].unique().tolist()) <= {0, 1, 2}
    table = read_attributes(root / ATTRIBUTE_FILE)
    male = table.names.index("Male")
    for i, file in enumerate(splits.train.files[:5]):
        label = splits.train[i]["targets"]["class_male"]
        assert label.dtype == torch.float32 and label.ndim == 0
        assert label.item() == float(table.rows[file][male] > 0)


def test_augmentation_only_on_train_and_keeps_classes(root: Path) -> None:
    splits = celeba.build(config(root, augmentation=True))
    torch.manual_seed(0)
    masks = torch.stack([splits.train[0]["targets"]["segmentsemantic"] for _ in range(8)])
    assert len({mask.numpy().tobytes() for mask in masks}) > 1 and set(masks.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(splits.val[0]["image"], splits.val[0]["image"])


def test_reading_on_access_gives_the_cached_samples(root: Path) -> None:
    files = ["3.jpg", "4.jpg"]
    cached = CelebAMaskHQ(root, files, TASKS, image_size=(16, 16))
    lazy = CelebAMaskHQ(root, files, TASKS, image_size=(16, 16), cache_budget=0)
    assert cached.cached_bytes > 0 and lazy.cached_bytes == 0
    for i in range(2):
        assert torch.equal(cached[i]["image"], lazy[i]["image"])
        assert torch.equal(cached[i]["targets"]["segmentsemantic"], lazy[i]["targets"]["segmentsemantic"])


def test_without_split_file_falls_back_to_the_seeded_split(root: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    written = json.loads((copy / SPLIT_FILE).read_text())
    (copy / SPLIT_FILE).unlink()
    splits = celeba.build(config(copy))
    assert {name: split.files for name, split in zip(("train", "val", "test"), splits)} == written
    with pytest.raises(DataError, match="celebA_split_file"):
        celeba.build(config(copy, celebA_split_file=str(tmp_path / "nope.json")))


def test_split_file_naming_a_missing_image_is_a_data_error(root: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["0.jpg", "999.jpg"], "val": [], "test": []}))
    with pytest.raises(DataError, match="999"):
        celeba.build(config(root, celebA_split_file=str(split_file)))


def test_unknown_attribute_lists_the_valid_names(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"class_NotAnAttribute.*Arched_Eyebrows"):
        celeba.attribute_tasks(["segmentsemantic", "class_NotAnAttribute"])
    aliases = celeba.attribute_tasks(["class_smile", "class_wavy_hair"])
    assert aliases == {"class_smile": "Smiling", "class_wavy_hair": "Wavy_Hair"}
    with pytest.raises(ConfigError, match="not an attribute task"):
        CelebAMaskHQ(root, ["0.jpg"], ["segmentsemantic"], image_size=(16, 16)).positive_rate("segmentsemantic")


def test_positive_rate_is_the_split_share_of_positives(root: Path) -> None:
    splits = celeba.build(config(root))
    table = read_attributes(root / ATTRIBUTE_FILE)
    column = table.names.index("Eyeglasses")
    for split in splits:
        expected = np.mean([table.rows[file][column] > 0 for file in split.files])
        assert split.positive_rate("class_Eyeglasses") == pytest.approx(expected)
    assert len(CELEBA_ATTRIBUTES) == len(table.names)


def test_shipped_configs_load_and_the_demo_builds(root: Path) -> None:
    study = load(REPO / "config" / "exp_single_multi_celebA.yaml")
    assert (study.dataset_name, study.class_threshold) == ("celebA", 0.4)
    assert study.task_list == ["segmentsemantic", "class_male", "class_smile"]
    demo = load(REPO / "config" / "demo_synthetic_celeba.yaml", overrides=[f"data_dir_celebA={root}"])
    sample = celeba.build(demo).train[0]
    assert sample["image"].shape == (3, 64, 64) and set(sample["targets"]) == set(demo.task_list)


def test_the_studys_first_third_of_each_split(root: Path) -> None:
    """The study's create_dataset.py served len(split) // 3 samples, the first ones."""
    full = celeba.build(config(root))
    third = celeba.build(config(root, celebA_subset="first_third"))
    for whole, part in zip(full, third):
        assert part.files == whole.files[: len(whole.files) // 3]


def test_the_split_file_is_also_found_where_the_study_kept_it(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    written = json.loads((copy / SPLIT_FILE).read_text())
    (copy / SPLIT_FILE).unlink()
    study_split = {"train": written["train"][:3], "val": written["val"], "test": written["test"]}
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / SPLIT_FILE).write_text(json.dumps(study_split))
    monkeypatch.chdir(tmp_path)  # the study ran from its code folder, which held dataset/celebA_datasplit.json
    assert celeba.build(config(copy)).train.files == study_split["train"]
