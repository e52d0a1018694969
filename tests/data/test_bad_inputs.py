"""Nothing silent: every broken data folder or file is one error line naming it, before anything is built.

Each case of the table copies a tiny generated dataset, breaks one thing and runs ``data.build``:
the error must be a DataError (ConfigError for config keys), one line, naming the file (or key)
and what was expected, and the data folder must be left exactly as it was. Cases whose problem
the pre-flight must find (``PRE``) also assert that no cache was decoded; the others (``DEC``)
are files outside the pre-flight's sample, found while the cache decodes every file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import data
from data import nyud, preflight
from data.cache import DenseDataset
from data.celeba_format import ATTRIBUTE_FILE, IMAGE_DIR, SEGMASK_DIR, SPLIT_FILE, segmask_name
from data.datasets import _split_keys
from data.files import read_color
from data.prepare_celeba import prepare
from data.synthetic import make_mtan
from data.synthetic_faces import make_celeba_raw
from utils.config import validate
from utils.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
PRE, DEC, ANY = "preflight", "decode", "any"


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def mtan_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mtan(tmp_path_factory.mktemp("mtan") / "nyuv2", num_images=8, height=16, width=20, seed=4)


@pytest.fixture(scope="module")
def celeba_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = make_celeba_raw(tmp_path_factory.mktemp("raw"), num_images=12, image_size=32, mask_size=16)
    out = tmp_path_factory.mktemp("celeba") / "formatted"
    prepare(raw, out, size=16, workers=1, progress=False)
    return out


def nyud_keys(root: Path) -> dict[str, list[str]]:
    """The split keys exactly as data.build sees them (train.txt minus the held-out validation tenth)."""
    return _split_keys(nyud, root, meta=False)


def sampled(root: Path, split: str = "train") -> str:
    """A NYUD_MT id the pre-flight decodes."""
    return preflight.sample(nyud_keys(root)[split])[0]


def unsampled(root: Path) -> str:
    """A NYUD_MT train id the pre-flight does not decode (only the cache does)."""
    keys = nyud_keys(root)["train"]
    return next(key for key in keys if key not in preflight.sample(keys))


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[: int(len(data_bytes) * fraction)])
    return path


def nyud_file(root: Path, folder: str, key: str) -> Path:
    suffix = {"images": ".jpg", "segmentation": ".png"}.get(folder, ".npy")
    return root / folder / f"{key}{suffix}"


def resave(path: Path, change: Callable[[np.ndarray], Any]) -> Path:
    np.save(path, change(np.load(path)))
    return path


def with_nan(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    array.flat[array.size // 2] = np.nan
    return array


# ----------------------------------------------------------------------------- breakers
# Each takes the copied data folder and returns what the message must name (a path or a key).


def _split_line(root: Path, text: bytes) -> Path:
    path = root / "gt_sets" / "train.txt"
    path.write_bytes(text)
    return path


def _train_ids(root: Path) -> list[str]:
    return (root / "gt_sets" / "train.txt").read_text().split()


def split_missing(root: Path) -> Path:
    path = root / "gt_sets" / "val.txt"
    path.unlink()
    return path


def split_not_utf8(root: Path) -> Path:
    return _split_line(root, "\n".join(_train_ids(root)).encode() + b"\n\xff\xfe0001\n")


def split_duplicate(root: Path) -> Path:
    ids = _train_ids(root)
    return _split_line(root, ("\n".join([*ids, ids[2]]) + "\n").encode())


def split_empty(root: Path) -> Path:
    return _split_line(root, b"")


def images_missing(root: Path) -> Path:
    keys = nyud_keys(root)
    first, second = nyud_file(root, "images", keys["train"][1]), nyud_file(root, "images", keys["test"][0])
    first.unlink()
    second.unlink()
    return first


def folder_missing(root: Path) -> Path:
    shutil.rmtree(root / "edge")
    return root / "edge"


def image_empty(root: Path) -> Path:
    path = nyud_file(root, "images", sampled(root))
    path.write_bytes(b"")
    return path


def image_truncated(root: Path) -> Path:
    return truncate(nyud_file(root, "images", sampled(root)))


def image_truncated_unsampled(root: Path) -> Path:
    return truncate(nyud_file(root, "images", unsampled(root)), 0.95)


def image_grayscale(root: Path) -> Path:
    path = nyud_file(root, "images", sampled(root))
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return path


def image_not_an_image(root: Path) -> Path:
    path = nyud_file(root, "images", sampled(root, "test"))
    path.write_text("this is not a jpeg\n")
    return path


def labels_rgb(root: Path) -> Path:
    path = nyud_file(root, "segmentation", sampled(root))
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), np.dstack([labels] * 3))
    return path


def labels_truncated(root: Path) -> Path:
    return truncate(nyud_file(root, "segmentation", sampled(root, "val")))


HUGE = 60_000  # a 60000 x 60000 header: 3.6e9 pixels, above OpenCV's decoding limit (2**30)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(path: Path) -> Path:
    """A structurally complete grayscale PNG (valid CRCs) whose IHDR claims HUGE x HUGE pixels."""
    header = struct.pack(">IIBBBBB", HUGE, HUGE, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    return path


def huge_jpeg(path: Path) -> Path:
    """The JPEG with its frame header (SOF0) rewritten to claim HUGE x HUGE pixels."""
    data_bytes = bytearray(path.read_bytes())
    index = 2
    while data_bytes[index + 1] not in (0xC0, 0xC1, 0xC2):
        index += 2 + (data_bytes[index + 2] << 8 | data_bytes[index + 3])
    data_bytes[index + 5:index + 9] = struct.pack(">HH", HUGE, HUGE)
    path.write_bytes(bytes(data_bytes))
    return path


def labels_huge_header(root: Path) -> Path:
    return huge_png(nyud_file(root, "segmentation", sampled(root)))


def image_huge_header(root: Path) -> Path:
    return huge_jpeg(nyud_file(root, "images", sampled(root)))


def image_huge_header_unsampled(root: Path) -> Path:
    return huge_jpeg(nyud_file(root, "images", unsampled(root)))


def labels_out_of_range(root: Path) -> Path:
    path = nyud_file(root, "segmentation", sampled(root))
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    labels[0, 0] = 41
    cv2.imwrite(str(path), labels)
    return path


def depth_wrong_shape(root: Path) -> Path:
    return resave(nyud_file(root, "depth", sampled(root)), lambda depth: depth[:-2])


def normals_wrong_layout(root: Path) -> Path:
    return resave(nyud_file(root, "normals", sampled(root)), lambda normals: normals.transpose(2, 0, 1))


def depth_pickle(root: Path) -> Path:
    path = nyud_file(root, "depth", sampled(root))
    path.write_bytes(pickle.dumps(np.load(path)))
    return path


def depth_object_array(root: Path) -> Path:
    path = nyud_file(root, "depth", sampled(root))
    np.save(path, np.array([{"depth": 1.0}], dtype=object), allow_pickle=True)
    return path


def depth_strings(root: Path) -> Path:
    return resave(nyud_file(root, "depth", sampled(root)), lambda depth: depth.astype(str))


def normals_empty(root: Path) -> Path:
    path = nyud_file(root, "normals", sampled(root, "test"))
    path.write_bytes(b"")
    return path


def edge_npz(root: Path) -> Path:
    path = nyud_file(root, "edge", sampled(root))
    edge = np.load(path)
    with open(path, "wb") as stream:
        np.savez(stream, edge=edge)
    return path


def edge_nan(root: Path) -> Path:
    return resave(nyud_file(root, "edge", sampled(root)), with_nan)


def edge_nan_unsampled(root: Path) -> Path:
    return resave(nyud_file(root, "edge", unsampled(root)), with_nan)


def depth_truncated_unsampled(root: Path) -> Path:
    return truncate(nyud_file(root, "depth", unsampled(root)), 0.9)


def mtan_image_nan(root: Path) -> Path:
    return resave(root / "train" / "image" / "0.npy", with_nan)


def mtan_image_four_channels(root: Path) -> Path:
    return resave(root / "val" / "image" / "0.npy", lambda image: np.dstack([image, image[..., :1]]))


def mtan_label_missing(root: Path) -> Path:
    path = root / "train" / "label" / "3.npy"
    path.unlink()
    return path


def mtan_depth_folder_missing(root: Path) -> Path:
    shutil.rmtree(root / "val" / "depth")
    return root / "val" / "depth"


def _celeba_split(root: Path) -> dict[str, list[str]]:
    return json.loads((root / SPLIT_FILE).read_text())


def celeba_row_missing(root: Path, split: str = "test") -> Path:
    path = root / ATTRIBUTE_FILE
    victim = _celeba_split(root)[split][0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if not line.startswith(f"{victim} ")) + "\n")
    return path


def celeba_attributes_not_utf8(root: Path) -> Path:
    path = root / ATTRIBUTE_FILE
    path.write_bytes(path.read_bytes() + b"\xff\n")
    return path


def celeba_mask_value(root: Path) -> Path:
    index = int(_celeba_split(root)["train"][0].split(".")[0])
    path = root / SEGMASK_DIR / segmask_name(index)
    return resave(path, lambda mask: np.where(mask == 2, 3, mask).astype(np.uint8))


def celeba_mask_nan(root: Path) -> Path:
    index = int(_celeba_split(root)["val"][0].split(".")[0])
    return resave(root / SEGMASK_DIR / segmask_name(index), with_nan)


def celeba_mask_missing(root: Path) -> Path:
    index = int(_celeba_split(root)["train"][2].split(".")[0])
    path = root / SEGMASK_DIR / segmask_name(index)
    path.unlink()
    return path


def celeba_image_truncated(root: Path) -> Path:
    return truncate(root / IMAGE_DIR / _celeba_split(root)["train"][0], 0.8)


def celeba_split_duplicate(root: Path) -> Path:
    split = _celeba_split(root)
    split["train"].append(split["train"][0])
    (root / SPLIT_FILE).write_text(json.dumps(split))
    return root / SPLIT_FILE


def celeba_split_bad_name(root: Path) -> Path:
    split = _celeba_split(root)
    split["val"][0] = "face.png"
    (root / SPLIT_FILE).write_text(json.dumps(split))
    return root / SPLIT_FILE


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    layout: str  # "nyud" | "mtan" | "celeba"
    breaker: Callable[[Path], Path | str]
    expected: str  # regex the message must contain besides the named file
    stage: str = PRE
    error: type[Exception] = DataError
    keys: tuple[tuple[str, Any], ...] = ()


CASES = {
    "split file missing": Case("nyud", split_missing, "file not found; expected the val ids"),
    "split file not UTF-8": Case("nyud", split_not_utf8, "not UTF-8 text"),
    "split file repeated id": Case("nyud", split_duplicate, r"repeats line 3; expected each id once"),
    "split file empty": Case("nyud", split_empty, "no ids; expected"),
    "image files missing": Case("nyud", images_missing, r"file not found; expected it for sample .* \(2 of the 60 files"),
    "task folder missing": Case("nyud", folder_missing, "folder not found; expected it to hold"),
    "image empty": Case("nyud", image_empty, r"empty file \(0 bytes\); expected a complete"),
    "image truncated": Case("nyud", image_truncated, "truncated JPEG.*; expected a complete"),
    "image truncated, not sampled": Case("nyud", image_truncated_unsampled, "truncated JPEG", stage=DEC),
    "image grayscale": Case("nyud", image_grayscale, "1-channel JPEG; expected a complete 3-channel"),
    "image not an image": Case("nyud", image_not_an_image, "not a JPEG or PNG file"),
    "labels RGB": Case("nyud", labels_rgb, "3-channel PNG; expected a complete single-channel"),
    "labels truncated": Case("nyud", labels_truncated, "truncated PNG"),
    "labels header huge": Case("nyud", labels_huge_header, r"PNG header declares 60000x60000 pixels.*; expected a complete single"),
    "image header huge": Case("nyud", image_huge_header, r"JPEG header declares 60000x60000 pixels.*; expected a complete 3-channel"),
    "image header huge, not sampled": Case("nyud", image_huge_header_unsampled, "JPEG header declares 60000x60000", stage=DEC),
    "label out of range": Case("nyud", labels_out_of_range, r"label 41 found; expected values 0 \(void\) \.\. 40"),
    "depth shape": Case("nyud", depth_wrong_shape, r"array of shape \(22, 32\); expected \(24, 32\)"),
    "normals channels first": Case("nyud", normals_wrong_layout, r"shape \(3, 24, 32\); expected \(24, 32, 3\)"),
    "depth is a pickle": Case("nyud", depth_pickle, "no .npy header .*pickle.*; expected a plain numeric .npy"),
    "depth object array": Case("nyud", depth_object_array, r"an object array \(pickled Python objects\); expected a plain numeric"),
    "depth of strings": Case("nyud", depth_strings, "dtype <U.*; expected a plain numeric"),
    "normals empty": Case("nyud", normals_empty, "empty file; expected"),
    "edge is a .npz": Case("nyud", edge_npz, r"\.npz archive.*; expected"),
    "edge NaN": Case("nyud", edge_nan, r"1 non-finite values \(NaN/Inf\); expected a finite edge map"),
    "edge NaN, not sampled": Case("nyud", edge_nan_unsampled, "non-finite", stage=DEC),
    "depth truncated, not sampled": Case("nyud", depth_truncated_unsampled, "cannot read.*; expected", stage=DEC),
    "mtan image NaN": Case("mtan", mtan_image_nan, r"non-finite values \(NaN/Inf\); expected floats in \[0, 1\]"),
    "mtan image 4 channels": Case("mtan", mtan_image_four_channels, r"shape \(16, 20, 4\); expected H x W x 3"),
    "mtan label missing": Case("mtan", mtan_label_missing, r"file not found.*\(1 of the"),
    "mtan folder missing": Case("mtan", mtan_depth_folder_missing, "folder not found"),
    "celeba attribute row missing": Case("celeba", celeba_row_missing, r"no row for \d+\.jpg.*\(1 of the 12 images"),
    "celeba attributes not UTF-8": Case("celeba", celeba_attributes_not_utf8, "not UTF-8 text"),
    "celeba mask value 3": Case("celeba", celeba_mask_value, r"pixels with values 3; expected classes 0\.\.2"),
    "celeba mask NaN": Case("celeba", celeba_mask_nan, "non-finite values.*expected classes"),
    "celeba mask missing": Case("celeba", celeba_mask_missing, "file not found"),
    "celeba image truncated": Case("celeba", celeba_image_truncated, "truncated JPEG"),
    "celeba split repeats": Case("celeba", celeba_split_duplicate, r"train\[\d+\]: '\d+\.jpg' repeats"),
    "celeba split bad name": Case("celeba", celeba_split_bad_name, "'face.png' is not a CelebA-HQ image name"),
    "num_seg_classes below the labels": Case(
        "nyud", lambda root: "num_seg_classes", r"num_seg_classes': 13, but .*segmentation/\d+\.png holds label \d+",
        stage=ANY, error=ConfigError, keys=(("num_seg_classes", 13),),
    ),
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden and temporary ones included) with its size and mtime."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the splits whose cache started decoding."""
    calls: list[str] = []
    original = DenseDataset._decode_all

    def spy(self: DenseDataset) -> Any:
        calls.append(self.name)
        return original(self)

    monkeypatch.setattr(DenseDataset, "_decode_all", spy)
    return calls


def config(case: Case, root: Path, make_cfg) -> Any:
    keys = dict(case.keys)
    if case.layout == "celeba":
        return validate({"Experiment_name": "bad_inputs", "dataset_name": "celebA", "task_list": ["segmentsemantic", "class_male"],
                         "data_dir_celebA": str(root), "input_shape": 16, "celebA_subset": "all", **keys})
    tasks = {"mtan": ["segmentsemantic", "depth_euclidean", "surface_normal"]}.get(case.layout)
    return make_cfg(root, **({"task_list": tasks, "input_shape": [16, 20]} if tasks else {}), **keys)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_it_and_nothing_is_built(
    name: str, nyud_root: Path, mtan_base: Path, celeba_base: Path, tmp_path: Path, make_cfg, decodes: list[str],
) -> None:
    case = CASES[name]
    base = {"nyud": nyud_root, "mtan": mtan_base, "celeba": celeba_base}[case.layout]
    root = Path(shutil.copytree(base, tmp_path / "data" / base.name))
    named = str(case.breaker(root))
    before = snapshot(tmp_path)
    with pytest.raises((DataError, ConfigError)) as raised:
        data.build(config(case, root, make_cfg))
    message = str(raised.value)
    assert type(raised.value) is case.error or isinstance(raised.value, case.error), message
    assert "\n" not in message, message
    assert named in message and "expected" in message, message
    assert re.search(case.expected, message), message
    assert snapshot(tmp_path) == before, "the data folder must be left as it was (no temporary or partial files)"
    if case.stage == PRE:
        assert decodes == [], f"the pre-flight should have raised before decoding: {message}"
    elif case.stage == DEC:
        assert decodes, f"expected the cache's decoding to find it: {message}"


def test_num_seg_classes_error_names_the_largest_label(nyud_root: Path, make_cfg) -> None:
    with pytest.raises(ConfigError) as raised:
        data.build(make_cfg(nyud_root, num_seg_classes=13))
    label = int(re.search(r"holds label (\d+)", str(raised.value)).group(1))
    path = re.search(r"but (\S+\.png) holds", str(raised.value)).group(1)
    assert label > 13 and int(cv2.imread(path, cv2.IMREAD_UNCHANGED).max()) == label
    assert len(data.build(make_cfg(nyud_root, num_seg_classes=40)).train) == 9


def test_num_seg_classes_is_checked_on_mtan_and_celeba_too(mtan_base: Path, celeba_base: Path, make_cfg) -> None:
    mtan_cfg = make_cfg(mtan_base, task_list=["segmentsemantic"], setup="singletask", input_shape=[16, 20], num_seg_classes=4)
    with pytest.raises(ConfigError, match=r"num_seg_classes': 4, but .*label/\d+\.npy holds label \d+"):
        data.build(mtan_cfg)
    celeba_cfg = config(Case("celeba", str, ""), celeba_base, make_cfg).model_copy(update={"num_seg_classes": 2})
    with pytest.raises(ConfigError, match=r"num_seg_classes': 2, but .*_mask\.npy holds class 2"):
        data.build(celeba_cfg)


# ----------------------------------------------------------------------------- skip_bad_samples


def test_skip_bad_samples_skips_and_counts(nyud_root: Path, tmp_path: Path, make_cfg, caplog: pytest.LogCaptureFixture) -> None:
    root = Path(shutil.copytree(nyud_root, tmp_path / "data"))
    keys = nyud_keys(root)
    missing, truncated, broken_edge = keys["train"][0], unsampled(root), keys["test"][1]
    nyud_file(root, "depth", missing).unlink()  # found by the pre-flight
    truncate(nyud_file(root, "images", truncated), 0.95)  # found while decoding
    resave(nyud_file(root, "edge", broken_edge), with_nan)
    with pytest.raises(DataError, match=re.escape(str(nyud_file(root, "depth", missing)))):
        data.build(make_cfg(root))
    with caplog.at_level(logging.WARNING, logger="data.cache"):
        splits = data.build(make_cfg(root, skip_bad_samples=True))
    assert splits.train.keys == [key for key in keys["train"] if key not in {missing, truncated}]
    assert splits.test.keys == [key for key in keys["test"] if key != broken_edge]
    assert splits.val.keys == keys["val"] and set(splits.train.skipped) == {missing, truncated}
    lines = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(lines) == 2, lines  # one line per split with skipped samples
    train_line = next(line for line in lines if line.startswith("train:"))
    assert f"skipped 2 of {len(keys['train'])}" in train_line and missing in train_line and truncated in train_line
    assert "truncated JPEG" in splits.train.skipped[truncated]
    sample = splits.train[0]
    assert sample["image"].isfinite().all() and len(splits.train) == len(keys["train"]) - 2


def test_skip_bad_samples_skips_a_file_whose_header_claims_a_giant_image(nyud_root: Path, tmp_path: Path, make_cfg) -> None:
    """OpenCV raises (not returns None) above its pixel limit: still the file's one line, skipped like any bad file."""
    root = Path(shutil.copytree(nyud_root, tmp_path / "data"))
    keys = nyud_keys(root)
    labels, image = labels_huge_header(root), image_huge_header_unsampled(root)
    with pytest.raises(DataError, match=re.escape(str(labels))):
        data.build(make_cfg(root))
    splits = data.build(make_cfg(root, skip_bad_samples=True))
    assert set(splits.train.skipped) == {labels.stem, image.stem}
    assert all("header declares 60000x60000 pixels" in problem for problem in splits.train.skipped.values())
    assert len(splits.train) == len(keys["train"]) - 2


def test_opencv_decode_errors_are_the_files_error(tmp_path: Path) -> None:
    """A cv2.error from imdecode (here its pixel limit lowered for the process) names the file."""
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    script = f"from data.files import read_color\nread_color({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "10"}, check=False)
    assert "BadFile: " + str(path) + ": PNG data does not decode (" in result.stderr, result.stderr
    assert "cv2.error" not in result.stderr, result.stderr


def test_skip_bad_samples_still_fails_when_a_split_is_all_bad(nyud_root: Path, tmp_path: Path, make_cfg) -> None:
    root = Path(shutil.copytree(nyud_root, tmp_path / "data"))
    for key in nyud_keys(root)["test"]:
        truncate(nyud_file(root, "images", key))
    with pytest.raises(DataError, match=r"truncated JPEG.*every other of the 2 samples of the test split is bad"):
        data.build(make_cfg(root, skip_bad_samples=True))


def test_skip_bad_samples_leaves_config_errors_alone(nyud_root: Path, make_cfg) -> None:
    with pytest.raises(ConfigError, match="num_seg_classes"):
        data.build(make_cfg(nyud_root, num_seg_classes=13, skip_bad_samples=True))


def test_skip_bad_samples_on_celeba_drops_images_without_attribute_rows(celeba_base: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(celeba_base, tmp_path / "formatted"))
    assert celeba_row_missing(root, "train").name == ATTRIBUTE_FILE
    cfg = validate({"Experiment_name": "bad_inputs", "dataset_name": "celebA", "task_list": ["segmentsemantic", "class_male"],
                    "data_dir_celebA": str(root), "input_shape": 16, "celebA_subset": "all", "skip_bad_samples": True})
    splits = data.build(cfg)
    split = _celeba_split(root)
    assert splits.train.files == split["train"][1:] and len(splits.train) == len(split["train"]) - 1
    assert splits.train[0]["targets"]["class_male"].ndim == 0


def test_decoding_on_access_checks_every_file_at_build_time(nyud_root: Path, tmp_path: Path) -> None:
    """Over the cache budget nothing is decoded at build time, but a truncated file still fails the build."""
    root = Path(shutil.copytree(nyud_root, tmp_path / "data"))
    keys = nyud_keys(root)["train"]
    truncate(nyud_file(root, "images", keys[1]), 0.95)
    source = nyud.Source(root, ["depth_euclidean"])
    with pytest.raises(DataError, match="truncated JPEG"):
        DenseDataset(source, keys, size=(24, 32), cache_budget=0)
    lazy = DenseDataset(source, keys, size=(24, 32), cache_budget=0, skip_bad=True)
    assert lazy.cached_bytes == 0 and keys[1] not in lazy.keys and len(lazy) == len(keys) - 1


def test_strict_reader_accepts_what_opencv_writes(tmp_path: Path) -> None:
    """The structural checks must not reject complete files: JPEG (baseline and progressive) and PNG."""
    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for name, params in (("a.jpg", []), ("b.jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), ("c.png", [])):
        cv2.imwrite(str(tmp_path / name), image, params)
        assert read_color(tmp_path / name).shape == (20, 30, 3)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes((tmp_path / "a.jpg").read_bytes() + b"\0" * 10)
    assert read_color(padded).shape == (20, 30, 3)


def test_file_errors_survive_pickling_and_dataloader_workers(tmp_path: Path) -> None:
    """Workers re-raise an exception as ``type(error)(message)``; it must stay a one-line DataError."""
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    truncate(path)
    with pytest.raises(DataError) as raised:
        read_color(path)
    for copy in (pickle.loads(pickle.dumps(raised.value)), type(raised.value)(str(raised.value))):
        assert isinstance(copy, DataError) and str(copy) == str(raised.value)


# ----------------------------------------------------------------------------- command line


def _cli_config(tmp_path: Path, name: str, root: Path, **keys: Any) -> Path:
    raw = {"Experiment_name": name, "task_list": ["segmentsemantic", "depth_euclidean"], "data_dir_NYU": str(root),
           "input_shape": [24, 32], "epochs": 1, "num_workers": 0, "backbone": "resnetd18", "backbone_width": 0.125,
           "head_channels": 8, "checkpoint_folder": str(tmp_path / "runs"), "wandb": {"mode": "disabled"}, **keys}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


@pytest.mark.slow
def test_cli_exits_2_with_one_error_line_and_no_traceback(nyud_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(nyud_root, tmp_path / "data"))
    victim = truncate(nyud_file(root, "images", sampled(root)))
    configs = {
        str(victim): _cli_config(tmp_path, "truncated", root),
        "config key 'num_seg_classes'": _cli_config(tmp_path, "classes", nyud_root, num_seg_classes=13),
    }
    before = snapshot(root)
    runs = {  # both at once: each pays the torch import
        expected: subprocess.Popen([sys.executable, str(REPO / "main_multi_trials.py"), "--config_exp", str(path)],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, path in configs.items()
    }
    for expected, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, stderr
    assert snapshot(root) == before and not (tmp_path / "runs").exists() and not (tmp_path / "out_csv").exists()


def test_blank_lines_are_skipped_and_overlapping_splits_warn(nyud_root: Path, tmp_path: Path, make_cfg,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    root = Path(shutil.copytree(nyud_root, tmp_path / "copy"))
    train = root / "gt_sets" / "train.txt"
    ids = train.read_text().split()
    val = (root / "gt_sets" / "val.txt").read_text().split()
    train.write_text("\n".join(ids[:3]) + "\n\n" + "\n".join([*ids[3:], val[0]]) + "\n\n")
    with caplog.at_level("WARNING"):
        splits = data.build(make_cfg(root))
    assert len(splits.train) + len(splits.val) == len(ids) + 1
    assert any("also in" in record.message and "not disjoint" in record.message for record in caplog.records)
