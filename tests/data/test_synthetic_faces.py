"""Synthetic faces: the raw release layout, deterministic by seed, attributes tied to the drawing."""

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import synthetic_faces
from data.celeba_format import CELEBA_ATTRIBUTES
from data.prepare_celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PARTITION_FILE,
    official_split,
    raw_mask_path,
    read_attributes,
)
from data.synthetic_faces import make_celeba_raw, sample_face


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_celeba_raw(tmp_path_factory.mktemp("raw"), num_images=40, image_size=64, mask_size=32, with_mapping=True)


def test_writes_the_raw_release_layout(raw: Path) -> None:
    assert sorted(path.name for path in (raw / IMAGE_DIR).iterdir()) == sorted(f"{n}.jpg" for n in range(40))
    assert cv2.imread(str(raw / IMAGE_DIR / "7.jpg")).shape == (64, 64, 3)
    skin = cv2.imread(str(raw_mask_path(raw, 7, "skin")), cv2.IMREAD_UNCHANGED)
    assert skin.shape == (32, 32) and set(np.unique(skin)) == {0, 255}
    assert raw_mask_path(raw, 2001, "hair").relative_to(raw).as_posix() == "CelebAMask-HQ-mask-anno/1/02001_hair.png"
    assert all(path.stat().st_size > 0 for path in (raw / "CelebAMask-HQ-mask-anno" / "0").iterdir())


def test_attribute_file_has_count_names_and_irregular_spacing(raw: Path) -> None:
    lines = (raw / ATTRIBUTE_FILE).read_text().splitlines()
    assert lines[0] == "40" and lines[1].split() == list(CELEBA_ATTRIBUTES)
    assert any("  " in line for line in lines[2:])
    table = read_attributes(raw / ATTRIBUTE_FILE)
    assert len(table.rows) == 40 and all(set(values) <= {1, -1} for values in table.rows.values())


def test_attributes_follow_the_drawing(raw: Path) -> None:
    table = read_attributes(raw / ATTRIBUTE_FILE)
    column = {name: table.names.index(name) for name in ("Eyeglasses", "Wearing_Hat", "Bald", "Male")}
    for n in range(40):
        values = table.rows[f"{n}.jpg"]
        assert (values[column["Eyeglasses"]] > 0) == raw_mask_path(raw, n, "eye_g").is_file()
        assert (values[column["Wearing_Hat"]] > 0) == raw_mask_path(raw, n, "hat").is_file()
        assert (values[column["Bald"]] > 0) == (not raw_mask_path(raw, n, "hair").is_file())
        hair = raw_mask_path(raw, n, "hair")
        if hair.is_file():  # men have short hair, women long hair reaching below the face's middle
            lowest_row = np.nonzero(cv2.imread(str(hair), cv2.IMREAD_GRAYSCALE).any(axis=1))[0].max()
            assert (lowest_row < 16) == (values[column["Male"]] > 0)
    faces = [sample_face(np.random.default_rng([0, n])) for n in range(60)]
    assert all((face.mouth_curve < -0.05) == face.attributes["Smiling"] for face in faces)
    assert all((face.brow_arch > 0.5) == face.attributes["Arched_Eyebrows"] for face in faces)
    assert 0 < sum(face.attributes["Male"] for face in faces) < 60


def test_same_seed_same_files_other_seed_other_faces(raw: Path, tmp_path: Path) -> None:
    again = make_celeba_raw(tmp_path / "again", num_images=3, image_size=64, mask_size=32, with_mapping=True)
    other = make_celeba_raw(tmp_path / "other", num_images=3, image_size=64, mask_size=32, seed=1)
    for n in range(3):
        assert filecmp.cmp(raw / IMAGE_DIR / f"{n}.jpg", again / IMAGE_DIR / f"{n}.jpg", shallow=False)
    assert not filecmp.cmp(again / IMAGE_DIR / "0.jpg", other / IMAGE_DIR / "0.jpg", shallow=False)
    assert (raw / ATTRIBUTE_FILE).read_text().splitlines()[2:5] == (again / ATTRIBUTE_FILE).read_text().splitlines()[2:]


def test_mapping_and_partition_place_every_image(raw: Path) -> None:
    files = [f"{n}.jpg" for n in range(40)]
    split, unplaced = official_split(files, raw / MAPPING_FILE, raw / PARTITION_FILE)
    assert not unplaced and sorted([file for files in split.values() for file in files], key=lambda name: int(name[:-4])) == files
    assert synthetic_faces.celeba_partition(162770) == 0 and synthetic_faces.celeba_partition(182638) == 2


def test_cli_writes_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic_faces.main(["--out", str(tmp_path), "--num-images", "2", "--image-size", "32", "--mask-size", "16"]) == 0
    assert (tmp_path / IMAGE_DIR / "1.jpg").is_file() and "2 synthetic faces" in capsys.readouterr().out
