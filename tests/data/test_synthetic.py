"""The synthetic generator writes the real layouts, with the value ranges and flaws of real data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.synthetic import class_roles, main, make_mtan, make_nyud, render_scene


def read_ids(root: Path, split: str) -> list[str]:
    return (root / "gt_sets" / f"{split}.txt").read_text().split()


def test_nyud_layout_has_every_file_of_every_split(nyud_root: Path) -> None:
    train, val = read_ids(nyud_root, "train"), read_ids(nyud_root, "val")
    assert (len(train), len(val)) == (10, 2) and not set(train) & set(val)
    assert not (nyud_root / "gt_sets" / "test.txt").exists()
    for sample_id in train + val:
        for folder, suffix in [("images", ".jpg"), ("segmentation", ".png"), ("depth", ".npy"), ("normals", ".npy"), ("edge", ".npy")]:
            assert (nyud_root / folder / f"{sample_id}{suffix}").is_file()


def test_nyud_test_fraction_writes_a_test_split(nyud_with_test_root: Path) -> None:
    sizes = [len(read_ids(nyud_with_test_root, split)) for split in ("train", "val", "test")]
    assert sizes == [7, 2, 3]


def test_nyud_values_look_like_real_nyu(nyud_root: Path) -> None:
    ids = read_ids(nyud_root, "train") + read_ids(nyud_root, "val")
    seg = np.stack([cv2.imread(str(nyud_root / "segmentation" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids])
    depth = np.stack([np.load(nyud_root / "depth" / f"{i}.npy") for i in ids])
    normals = np.stack([np.load(nyud_root / "normals" / f"{i}.npy") for i in ids])
    edge = np.stack([np.load(nyud_root / "edge" / f"{i}.npy") for i in ids])
    image = cv2.imread(str(nyud_root / "images" / f"{ids[0]}.jpg"))
    assert image.shape == (24, 32, 3)
    assert seg.dtype == np.uint8 and seg.max() <= 40 and (seg == 0).any() and len(np.unique(seg)) > 5
    assert depth.dtype == np.float32 and (depth == 0).any()
    valid = depth > 0
    assert depth[valid].min() > 0.3 and depth[valid].max() < 15.0
    assert normals.dtype == np.float32 and normals.shape[-1] == 3
    length = np.linalg.norm(normals, axis=-1)
    np.testing.assert_allclose(length[valid], 1.0, atol=1e-5)
    assert np.all(normals[~valid] == 0)
    assert edge.dtype == np.float32 and edge.min() >= 0 and edge.max() <= 1 and edge.mean() > 0.02


def test_generation_is_deterministic_by_seed(tmp_path: Path) -> None:
    small = {"num_images": 3, "height": 12, "width": 16}
    first = make_nyud(tmp_path / "a", seed=4, **small)
    again = make_nyud(tmp_path / "b", seed=4, **small)
    other = make_nyud(tmp_path / "c", seed=5, **small)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 3 * 5 + 2
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (first / "depth" / "0000.npy").read_bytes() != (other / "depth" / "0000.npy").read_bytes()


def test_normals_agree_with_the_depth_surface() -> None:
    """Normals from depth gradients (back-projected with the focal length) match the stored ones."""
    scene = render_scene(np.random.default_rng(11), height=60, width=80, roles=class_roles(40))
    height, width = scene.depth.shape
    v, u = np.mgrid[0:height, 0:width] + 0.5
    points = np.stack([(u - width / 2) / scene.focal, (v - height / 2) / scene.focal, np.ones_like(u)], -1) * scene.depth[..., None]
    du, dv = points[1:-1, 2:] - points[1:-1, :-2], points[2:, 1:-1] - points[:-2, 1:-1]
    estimate = np.cross(dv, du)
    estimate /= np.linalg.norm(estimate, axis=-1, keepdims=True) + 1e-12
    stored = scene.normals[1:-1, 1:-1]
    smooth = cv2.dilate(scene.edge, np.ones((3, 3), np.uint8))[1:-1, 1:-1] == 0
    window = cv2.erode((scene.depth > 0).astype(np.uint8), np.ones((3, 3), np.uint8))[1:-1, 1:-1] > 0
    interior = smooth & window
    assert interior.mean() > 0.3
    cosine = np.abs(np.sum(estimate * stored, axis=-1))[interior]
    assert np.median(cosine) > np.cos(np.radians(3)) and np.mean(cosine > np.cos(np.radians(10))) > 0.9
    facing = np.sum(stored * points[1:-1, 1:-1], axis=-1)[interior]
    assert np.all(facing < 0), "normals face the camera"


def test_mtan_layout_and_encodings(mtan_root: Path) -> None:
    assert sorted(p.name for p in mtan_root.iterdir()) == ["train", "val"]
    assert len(list((mtan_root / "train" / "image").glob("*.npy"))) == 10
    image = np.load(mtan_root / "train" / "image" / "0.npy")
    label = np.stack([np.load(p) for p in (mtan_root / "train" / "label").glob("*.npy")])
    depth = np.load(mtan_root / "train" / "depth" / "0.npy")
    normal = np.load(mtan_root / "val" / "normal" / "1.npy")
    assert image.shape == (24, 32, 3) and image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    assert label.dtype == np.float32 and (label == -1).any() and label.max() <= 12
    assert depth.shape == (24, 32, 1) and (depth == 0).any()
    assert normal.shape == (24, 32, 3)


def test_cli_writes_the_requested_layout(tmp_path: Path) -> None:
    main(["--out", str(tmp_path / "m"), "--layout", "mtan", "--num-images", "4", "--height", "8", "--width", "12", "--test-fraction", "0.25"])
    assert [len(list((tmp_path / "m" / s / "depth").glob("*.npy"))) for s in ("train", "val", "test")] == [2, 1, 1]
    assert np.load(tmp_path / "m" / "test" / "image" / "0.npy").shape == (8, 12, 3)


def test_too_few_classes_is_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_mtan(tmp_path / "m", num_images=2, num_classes=3)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-images", "0"], "--num-images 0 is too few; expected at least 2"),
    (["--num-images", "1"], "--num-images 1 is too few; expected at least 2"),
    (["--num-images", "2", "--test-fraction", "0.25"], "--num-images 2 is too few; expected at least 3"),
    (["--height", "0"], "--height 0 is out of range; expected 1 to 8192 pixels"),
    (["--width", "-4"], "--width -4 is out of range; expected 1 to 8192 pixels"),
    (["--seed", "-1"], "--seed -1 is negative; expected a non-negative integer"),
    (["--test-fraction", "1"], "--test-fraction 1.0 is out of range; expected a fraction in [0, 1)"),
    (["--test-fraction", "0.9"], "--test-fraction 0.9 leaves no train images"),
])
def test_cli_rejects_unusable_settings_before_writing(flags: list[str], message: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["file", "file/sub"])
def test_cli_rejects_an_output_that_cannot_be_a_folder(out: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / out), "--num-images", "2"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"--out '{tmp_path / out}'" in errors[0] and "is not a folder" in errors[0], errors
    assert (tmp_path / "file").read_text() == "mine"


def test_smallest_settings_the_generator_accepts(tmp_path: Path) -> None:
    """2 images (1 train, 1 val) of 1 x 1 pixels: the bounds the command line checks are the generator's own."""
    root = make_nyud(tmp_path / "tiny", num_images=2, height=1, width=1)
    assert read_ids(root, "train") == ["0000"] and read_ids(root, "val") == ["0001"]
    assert np.load(root / "depth" / "0000.npy").shape == (1, 1)


def test_library_rejects_unusable_settings_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_images: 1 is too few"):
        make_nyud(tmp_path / "n", num_images=1)
    with pytest.raises(ValueError, match="seed: -1 is negative"):
        make_mtan(tmp_path / "m", num_images=4, seed=-1)
    assert list(tmp_path.iterdir()) == []
