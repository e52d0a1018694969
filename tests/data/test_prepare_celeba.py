"""Preparing the raw CelebAMask-HQ release: outputs, class table, split, resumability, bad inputs."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import prepare_celeba
from data.prepare_celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PART_CLASSES,
    PARTITION_FILE,
    RAW_MASK_DIR,
    SEGMASK_DIR,
    SPLIT_FILE,
    prepare,
    raw_mask_path,
    read_attributes,
)
from data.synthetic_faces import celeba_partition, make_celeba_raw

NUM, SIZE = 24, 32
FILES = [f"{n}.jpg" for n in range(NUM)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_celeba_raw(tmp_path_factory.mktemp("raw"), num_images=NUM, image_size=64, mask_size=SIZE)


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("formatted")
    assert prepare_celeba.main(["--raw", str(raw), "--out", str(out), "--size", str(SIZE), "--workers", "2"]) == 0
    return out


def run(raw: Path, out: Path, *extra: str) -> int:
    return prepare_celeba.main(["--raw", str(raw), "--out", str(out), "--size", str(SIZE), "--workers", "1", *extra])


def copy_raw(raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw, tmp_path / "raw"))


def mtimes(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_writes_images_masks_attributes_and_split(raw: Path, prepared: Path) -> None:
    assert sorted(path.name for path in (prepared / IMAGE_DIR).iterdir()) == sorted(FILES)
    assert cv2.imread(str(prepared / IMAGE_DIR / "3.jpg")).shape == (SIZE, SIZE, 3)
    masks = [np.load(prepared / SEGMASK_DIR / f"{n:05d}_mask.npy") for n in range(NUM)]
    assert all(mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) for mask in masks)
    assert set(np.unique(np.stack(masks))) == {0, 1, 2}
    assert read_attributes(prepared / ATTRIBUTE_FILE) == read_attributes(raw / ATTRIBUTE_FILE)
    split = json.loads((prepared / SPLIT_FILE).read_text())
    assert [len(split[name]) for name in ("train", "val", "test")] == [19, 2, 3]
    assert sorted([file for files in split.values() for file in files], key=lambda name: int(name[:-4])) == FILES  # disjoint and covering


def test_masks_follow_the_part_table(raw: Path, prepared: Path) -> None:
    hair_pixels = 0
    for n in range(NUM):
        parts = {part: cv2.imread(str(raw_mask_path(raw, n, part)), cv2.IMREAD_GRAYSCALE) > 0
                 for part in PART_CLASSES if raw_mask_path(raw, n, part).is_file()}
        mask = np.load(prepared / SEGMASK_DIR / f"{n:05d}_mask.npy")
        none = np.zeros((SIZE, SIZE), bool)
        cleared = np.logical_or.reduce([parts.get(part, none) for part in ("hat", "ear_r", "neck_l", "neck", "cloth")])
        hair = parts.get("hair", none) & ~cleared
        face = np.logical_or.reduce([parts[part] for part in parts if PART_CLASSES[part] == 2]) & ~hair & ~cleared
        assert (mask[hair] == 1).all() and (mask[face] == 2).all()
        assert (mask[~(hair | face)] == 0).all()
        hair_pixels += hair.sum()
    assert hair_pixels > 0


def test_help_prints_the_part_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prepare_celeba.main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "eye_g   -> 2 (face)" in help_text and "hair    -> 1 (hair)" in help_text and "cloth   -> 0" in help_text


@pytest.mark.parametrize("size", [0, 1025, 100_000])
def test_a_size_outside_the_releases_range_exits_2_before_reading(size: int, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prepare_celeba.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--size", str(size)])
    assert exit_.value.code == 2
    assert f"--size must be 1 to 1024 (the release's images are 1024x1024), got {size}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_exits_2_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prepare_celeba.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--seed", "-1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: python -m data.prepare_celeba: --seed must be a non-negative integer, got -1 (see python -m data.prepare_celeba --help)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["file", "file/sub"])
def test_an_output_that_cannot_be_a_folder_exits_2_before_work(out: str, raw: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("mine")
    assert run(raw, tmp_path / out) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and f"--out '{tmp_path / out}'" in error and "is not a folder" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine"


def test_official_partition_when_mapping_and_partition_are_present(tmp_path: Path) -> None:
    source = make_celeba_raw(tmp_path / "raw", num_images=NUM, image_size=32, mask_size=16, seed=3, with_mapping=True)
    assert run(source, tmp_path / "out") == 0
    expected: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for line in (source / MAPPING_FILE).read_text().splitlines()[1:]:
        index, _, orig_file = line.split()
        expected[("train", "val", "test")[celeba_partition(int(orig_file[:-4]))]].append(f"{index}.jpg")
    assert json.loads((tmp_path / "out" / SPLIT_FILE).read_text()) == expected
    assert (source / PARTITION_FILE).is_file()


def test_second_run_is_a_no_op(raw: Path, prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = mtimes(prepared)
    capsys.readouterr()
    assert run(raw, prepared) == 0
    assert mtimes(prepared) == before
    assert f"prepared 0, already done {NUM}, bad 0" in capsys.readouterr().out


def test_interrupted_run_recovers(raw: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    renames = 0

    def replace_then_die(source: str, target: str) -> None:  # a kill between a write and its rename
        nonlocal renames
        renames += 1
        if renames > 10:
            raise KeyboardInterrupt
        os.rename(source, target)

    monkeypatch.setattr(prepare_celeba.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, out, size=SIZE, workers=1, progress=False)
    monkeypatch.undo()
    assert not (out / SPLIT_FILE).exists() and not (out / ATTRIBUTE_FILE).exists()
    assert len(list((out / SEGMASK_DIR).glob("*.npy"))) == 5
    (out / IMAGE_DIR / ".7.jpg.12345.tmp").write_bytes(b"torn")  # what a SIGKILL leaves behind

    report = prepare(raw, out, size=SIZE, workers=1, progress=False)
    assert (report.prepared, report.done, report.bad) == (NUM - 5, 5, ())
    assert not list(out.rglob("*.tmp"))
    for name in (SPLIT_FILE, ATTRIBUTE_FILE, f"{SEGMASK_DIR}/00007_mask.npy", f"{IMAGE_DIR}/7.jpg"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes()


def test_new_size_redoes_the_outputs(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(raw, out, size=16, workers=1, progress=False)
    report = prepare(raw, out, size=SIZE, workers=1, progress=False)
    assert report.prepared == NUM and np.load(out / SEGMASK_DIR / "00000_mask.npy").shape == (SIZE, SIZE)


def test_missing_folder_exits_2_naming_it(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = copy_raw(raw, tmp_path)
    shutil.rmtree(source / RAW_MASK_DIR)
    assert run(source, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert str(source / RAW_MASK_DIR) in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mask_without_image_exits_2_and_writes_nothing(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = copy_raw(raw, tmp_path)
    (source / IMAGE_DIR / "3.jpg").unlink()
    assert run(source, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "00003_" in error and "mask without image" in error and "has no image" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unreadable_image_exits_2_without_split(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = copy_raw(raw, tmp_path)
    (source / IMAGE_DIR / "5.jpg").write_bytes(b"not a jpeg")
    assert run(source, tmp_path / "out") == 2
    assert f"{source / IMAGE_DIR / '5.jpg'}: unreadable image" in capsys.readouterr().err
    assert not (tmp_path / "out" / SPLIT_FILE).exists() and not (tmp_path / "out" / ATTRIBUTE_FILE).exists()


def test_skip_bad_leaves_bad_inputs_out_and_counts_them(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = copy_raw(raw, tmp_path)
    (source / IMAGE_DIR / "3.jpg").unlink()
    (source / IMAGE_DIR / "5.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert run(source, out, "--skip-bad") == 0
    assert f"prepared {NUM - 2}, already done 0, bad 3" in capsys.readouterr().out  # mask, row, unreadable
    kept = {file for files in json.loads((out / SPLIT_FILE).read_text()).values() for file in files}
    assert kept == set(FILES) - {"3.jpg", "5.jpg"}
    assert set(read_attributes(out / ATTRIBUTE_FILE).rows) == kept
    assert not (out / IMAGE_DIR / "5.jpg").exists()


def test_no_usable_image_is_an_error(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = copy_raw(raw, tmp_path)
    for image in (source / IMAGE_DIR).iterdir():
        image.write_bytes(b"")
    assert run(source, tmp_path / "out", "--skip-bad") == 2
    assert "no usable image" in capsys.readouterr().err
