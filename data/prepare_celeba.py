"""Turn the CelebAMask-HQ raw release into the study's formatted layout (REFERENCE §3).

The study trained on a formatted copy: images resized once, the 18 part masks merged into
3 classes (0 background, 1 hair, 2 skin/face), and a fixed train/val/test split file. This
module rebuilds that copy from the public release so that nobody has to download the study's
private one, and owns the file formats both copies share (the attribute file, the split).

Run ``python -m data.prepare_celeba --raw DIR --out DIR``. A run can be killed at any time:
every output is written to a temporary file and renamed, finished outputs are skipped on the
next run, and the split and attribute files (which mark the copy as complete) come last.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.checkpoint import write_bytes
from utils.errors import DataError

log = logging.getLogger(__name__)

IMAGE_DIR = "CelebA-HQ-img"
RAW_MASK_DIR = "CelebAMask-HQ-mask-anno"
SEGMASK_DIR = "CelebA-HQ-segmask"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
SPLIT_FILE = "celebA_datasplit.json"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION_FILE = "list_eval_partition.txt"
SPLIT_NAMES = ("train", "val", "test")
SEG_CLASSES = ("background", "hair", "face")
#: The seed of the split when the official partition is absent; the loader's fallback uses it too.
DEFAULT_SPLIT_SEED = 0

#: Part -> class of the 3-class masks, in painting order: each part overwrites the ones before
#: it. The order is the release's own label order (CelebAMask-HQ ``g_mask.py`` paints its
#: 19-class maps the same way), so our masks are exactly its label maps with classes merged.
#: Skin first, face parts over it, hair over the face, then hat, earrings, necklace, neck and
#: cloth clear what they cover. Eyeglasses (``eye_g``) lie over the face, so they count as face.
PART_CLASSES: dict[str, int] = {
    "skin": 2, "nose": 2, "eye_g": 2, "l_eye": 2, "r_eye": 2, "l_brow": 2, "r_brow": 2,
    "l_ear": 2, "r_ear": 2, "mouth": 2, "u_lip": 2, "l_lip": 2,
    "hair": 1,
    "hat": 0, "ear_r": 0, "neck_l": 0, "neck": 0, "cloth": 0,
}
#: Raw mask files per sub-folder of the release (``<k> = n // 2000``).
MASKS_PER_FOLDER = 2000
JPEG_QUALITY = 95

_IMAGE_NAME = re.compile(r"(\d+)\.jpg")
_MASK_NAME = re.compile(r"(\d+)_([a-z_]+)\.png")


def image_name(index: int) -> str:
    """``<n>.jpg``: the name of image ``n`` in both layouts, the split and the attribute file."""
    return f"{index}.jpg"


def segmask_name(index: int) -> str:
    """``<n:05d>_mask.npy``: the 3-class mask of image ``n`` in the formatted layout."""
    return f"{index:05d}_mask.npy"


def raw_mask_path(raw: Path, index: int, part: str) -> Path:
    """Where the release keeps the mask of one part of image ``n``."""
    return raw / RAW_MASK_DIR / str(index // MASKS_PER_FOLDER) / f"{index:05d}_{part}.png"


def index_of(name: str) -> int:
    """The image number of ``<n>.jpg``; DataError for any other name."""
    match = _IMAGE_NAME.fullmatch(name)
    if match is None:
        raise DataError(f"'{name}' is not a CelebA-HQ image name; expected <n>.jpg")
    return int(match.group(1))


# ----------------------------------------------------------------------------- file formats


@dataclass(frozen=True)
class AttributeTable:
    """The attribute file: 40 names and, per image file, its values (+1 present, -1 absent)."""

    names: tuple[str, ...]
    rows: dict[str, tuple[int, ...]]

    def positives(self, attribute: str, files: Sequence[str]) -> np.ndarray:
        """0/1 float32 labels of one attribute for ``files``, in their order."""
        column = self.names.index(attribute)
        return np.array([self.rows[name][column] > 0 for name in files], dtype=np.float32)


def read_attributes(path: Path) -> AttributeTable:
    """Parse the release's attribute file: a count line, a names line, then ``<n>.jpg`` and
    one value per name, separated by any amount of whitespace (the real file mixes one and
    two spaces). The count line is optional, as some re-saved copies drop it."""
    if not path.is_file():
        raise DataError(f"attribute file '{path}' not found; expected {ATTRIBUTE_FILE} of the CelebAMask-HQ release")
    lines = [(number, line.split()) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(number, tokens) for number, tokens in lines if tokens]
    if lines and len(lines[0][1]) == 1 and lines[0][1][0].isdigit():
        lines = lines[1:]
    if not lines:
        raise DataError(f"{path}: no attribute names; expected a line of names after the count line")
    names = tuple(lines[0][1])
    rows: dict[str, tuple[int, ...]] = {}
    for number, tokens in lines[1:]:
        if len(tokens) != len(names) + 1:
            raise DataError(f"{path}:{number}: expected a file name and {len(names)} values, got {len(tokens)} fields")
        try:
            values = tuple(int(token) for token in tokens[1:])
        except ValueError:
            raise DataError(f"{path}:{number}: attribute values must be 1 or -1, got {' '.join(tokens[1:])!r}") from None
        if any(value not in (1, -1) for value in values):
            raise DataError(f"{path}:{number}: attribute values must be 1 or -1, got {' '.join(tokens[1:])!r}")
        rows[tokens[0]] = values
    return AttributeTable(names, rows)


def format_attributes(table: AttributeTable, files: Iterable[str]) -> str:
    """The attribute file for ``files`` in the release's format, one space between fields."""
    files = list(files)
    lines = [str(len(files)), " ".join(table.names)]
    lines += [" ".join([name, *map(str, table.rows[name])]) for name in files]
    return "\n".join(lines) + "\n"


def seeded_split(files: Sequence[str], seed: int = DEFAULT_SPLIT_SEED) -> dict[str, list[str]]:
    """A deterministic 80/10/10 split for copies without the official CelebA partition."""
    ordered = sorted(files, key=index_of)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_train, n_val = round(0.8 * len(ordered)), round(0.1 * len(ordered))
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return {name: [ordered[i] for i in sorted(part)] for name, part in zip(SPLIT_NAMES, parts)}


def official_split(files: Sequence[str], mapping: Path, partition: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The CelebA train/val/test partition carried over to CelebA-HQ images through the
    release's mapping file. Returns the split and, per file it cannot place, why.

    File names are compared by number, so ``000123.jpg`` and ``123.jpg`` match."""
    original = {}
    for number, tokens in _table_rows(mapping, columns=3, header="idx"):
        try:
            original[int(tokens[0])] = int(Path(tokens[2]).stem)
        except ValueError:
            raise DataError(f"{mapping}:{number}: expected 'idx orig_idx orig_file', got {' '.join(tokens)!r}") from None
    subset = {}
    for number, tokens in _table_rows(partition, columns=2, header=None):
        if tokens[1] not in ("0", "1", "2") or not Path(tokens[0]).stem.isdigit():
            raise DataError(f"{partition}:{number}: expected '<file> <0|1|2>', got {' '.join(tokens)!r}")
        subset[int(Path(tokens[0]).stem)] = SPLIT_NAMES[int(tokens[1])]
    split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    unplaced = {}
    for name in sorted(files, key=index_of):
        orig = original.get(index_of(name))
        if orig is None:
            unplaced[name] = f"{mapping}: no row for image {name}"
        elif orig not in subset:
            unplaced[name] = f"{partition}: no line for CelebA file {orig:06d}.jpg (image {name})"
        else:
            split[subset[orig]].append(name)
    return split, unplaced


def _table_rows(path: Path, *, columns: int, header: str | None) -> Iterator[tuple[int, list[str]]]:
    """Whitespace-separated rows of a text table, skipping blank lines and a header line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        tokens = line.split()
        if not tokens or (header is not None and tokens[0] == header):
            continue
        if len(tokens) < columns:
            raise DataError(f"{path}:{number}: expected {columns} columns, got {' '.join(tokens)!r}")
        yield number, tokens


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomic write that leaves an identical file untouched (so a rerun changes no mtime)."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes(path, data)
    return True


# ----------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class Problem:
    """One bad input; ``excluded`` is the image it keeps out of the copy, if any."""

    message: str
    excluded: int | None = None


class BadInputs(DataError):
    """The raw copy has bad inputs and ``--skip-bad`` was not given; ``problems`` lists them."""

    def __init__(self, raw: Path, problems: Sequence[Problem]):
        self.problems = [problem.message for problem in problems]
        super().__init__(
            f"{len(problems)} bad input(s) under '{raw}', first: {self.problems[0]}; "
            "fix them or rerun with --skip-bad to leave them out"
        )


@dataclass(frozen=True)
class Report:
    """What a run did: images prepared now, found already done, and bad inputs skipped."""

    out: Path
    prepared: int
    done: int
    bad: tuple[str, ...]
    split_source: str
    split_sizes: dict[str, int]


@dataclass(frozen=True)
class _Job:
    """The inputs and outputs of one image; plain strings so it pickles cheaply to workers."""

    index: int
    image: str
    parts: tuple[tuple[str, str], ...]
    out: str
    size: int


def prepare(
    raw: Path,
    out: Path,
    *,
    size: int = 256,
    workers: int | None = None,
    skip_bad: bool = False,
    seed: int = DEFAULT_SPLIT_SEED,
    progress: bool = True,
) -> Report:
    """Write the formatted copy of ``raw`` into ``out``; see the module docstring.

    Raises:
        DataError: the raw layout is missing a folder or file, ``out`` is ``raw``, or no
            image is usable.
        BadInputs: bad inputs were found and ``skip_bad`` is False. Images finished before
            that stay (they are complete); the split and attribute files are not written.
    """
    raw, out = Path(raw), Path(out)
    _check_layout(raw, out)
    attributes = read_attributes(raw / ATTRIBUTE_FILE)
    jobs, problems = _scan(raw, out, size, attributes)
    files = [image_name(job.index) for job in jobs]
    split, split_source, unplaced = _split(raw, files, seed)
    problems += unplaced
    if problems and not skip_bad:
        raise BadInputs(raw, problems)

    excluded = {problem.excluded for problem in problems}
    jobs = [job for job in jobs if job.index not in excluded]
    for folder in (out, out / IMAGE_DIR, out / SEGMASK_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
    pending = [job for job in jobs if not _is_done(job)]
    failed = [Problem(message, job.index) for job, message in _run(pending, workers, progress) if message]
    if failed and not skip_bad:
        raise BadInputs(raw, failed)

    problems += failed
    unreadable = {problem.excluded for problem in failed}
    final = [image_name(job.index) for job in jobs if job.index not in unreadable]
    if not final:
        raise DataError(
            f"'{raw / IMAGE_DIR}': no usable image (bad inputs: {len(problems)}); expected <n>.jpg images with part masks"
        )
    if split_source == "seeded":
        split = seeded_split(final, seed)
    else:
        kept = set(final)
        split = {name: [file for file in split[name] if file in kept] for name in SPLIT_NAMES}
    write_if_changed(out / ATTRIBUTE_FILE, format_attributes(attributes, final).encode())
    write_if_changed(out / SPLIT_FILE, (json.dumps(split) + "\n").encode())
    return Report(
        out=out,
        prepared=len(pending) - len(failed),
        done=len(jobs) - len(pending),
        bad=tuple(problem.message for problem in problems),
        split_source=split_source,
        split_sizes={name: len(split[name]) for name in SPLIT_NAMES},
    )


def _check_layout(raw: Path, out: Path) -> None:
    required = [raw / IMAGE_DIR, raw / RAW_MASK_DIR, raw / ATTRIBUTE_FILE]
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        raise DataError(f"'{raw}' is not a CelebAMask-HQ raw release: missing {', '.join(missing)}")
    if out.resolve() == raw.resolve():
        raise DataError(f"--out '{out}' is the raw folder; expected a separate folder for the formatted copy")


def _scan(raw: Path, out: Path, size: int, attributes: AttributeTable) -> tuple[list[_Job], list[Problem]]:
    """Pair every image with its part masks and attribute row; list whatever does not pair."""
    problems: list[Problem] = []
    images: dict[int, Path] = {}
    for path in sorted((raw / IMAGE_DIR).glob("*.jpg")):
        match = _IMAGE_NAME.fullmatch(path.name)
        if match is None:
            problems.append(Problem(f"{path}: unexpected image name; expected <n>.jpg"))
        else:
            images[int(match.group(1))] = path
    parts: dict[int, dict[str, Path]] = {}
    for path in sorted((raw / RAW_MASK_DIR).rglob("*.png")):
        match = _MASK_NAME.fullmatch(path.name)
        if match is None or match.group(2) not in PART_CLASSES:
            problems.append(Problem(f"{path}: unexpected mask name; expected <n:05d>_<part>.png, part in {list(PART_CLASSES)}"))
        else:
            parts.setdefault(int(match.group(1)), {})[match.group(2)] = path
    for index in sorted(set(parts) - set(images)):
        first = next(iter(parts[index].values()))
        problems.append(Problem(f"{first}: mask without image; expected {raw / IMAGE_DIR / image_name(index)}"))
    for name in sorted(set(attributes.rows) - {image_name(index) for index in images}):
        problems.append(Problem(f"{raw / ATTRIBUTE_FILE}: row '{name}' has no image in {raw / IMAGE_DIR}"))
    jobs = []
    for index, path in sorted(images.items()):
        if index not in parts:
            problems.append(Problem(f"{path}: no part masks; expected {raw_mask_path(raw, index, '<part>')}", index))
        elif image_name(index) not in attributes.rows:
            problems.append(Problem(f"{path}: no row in {raw / ATTRIBUTE_FILE}", index))
        else:
            ordered = tuple((part, str(parts[index][part])) for part in PART_CLASSES if part in parts[index])
            jobs.append(_Job(index, str(path), ordered, str(out), size))
    return jobs, problems


def _split(raw: Path, files: Sequence[str], seed: int) -> tuple[dict[str, list[str]], str, list[Problem]]:
    """The official partition when the release's mapping and CelebA's partition file are both
    there, otherwise the seeded split (drawn again at the end, over the images kept)."""
    mapping, partition = raw / MAPPING_FILE, raw / PARTITION_FILE
    if mapping.is_file() and partition.is_file():
        split, unplaced = official_split(files, mapping, partition)
        return split, "official", [Problem(message, index_of(name)) for name, message in unplaced.items()]
    if mapping.is_file() or partition.is_file():
        log.warning("only one of %s and %s is in %s; using the seeded split", MAPPING_FILE, PARTITION_FILE, raw)
    return seeded_split(files, seed), "seeded", []


def _is_done(job: _Job) -> bool:
    """Both outputs exist and the mask has the requested size (a rerun with --size redoes it)."""
    image = Path(job.out) / IMAGE_DIR / image_name(job.index)
    mask = Path(job.out) / SEGMASK_DIR / segmask_name(job.index)
    if not (image.is_file() and mask.is_file()):
        return False
    try:
        return np.load(mask, mmap_mode="r").shape == (job.size, job.size)
    except (OSError, ValueError):
        return False


def _run(jobs: Sequence[_Job], workers: int | None, progress: bool) -> Iterator[tuple[_Job, str | None]]:
    """Prepare ``jobs`` in worker processes (in this one when ``workers`` is 1), in order."""
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress or not jobs)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                result = _prepare_image(job)
                bar.update()
                yield job, result
            return
        chunk = max(1, min(64, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for job, result in zip(jobs, pool.map(_prepare_image, jobs, chunksize=chunk)):
                bar.update()
                yield job, result
    finally:
        bar.close()


def _prepare_image(job: _Job) -> str | None:
    """Resize one image and merge its part masks; returns a message when an input is unreadable."""
    image = cv2.imread(job.image, cv2.IMREAD_COLOR)
    if image is None:
        return f"{job.image}: unreadable image"
    label = np.zeros((job.size, job.size), np.uint8)
    for part, path in job.parts:
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            return f"{path}: unreadable mask"
        # Nearest sampling commutes with painting, so resizing each part first is exact.
        mask = cv2.resize(mask, (job.size, job.size), interpolation=cv2.INTER_NEAREST)
        label[mask > 127] = PART_CLASSES[part]
    if image.shape[:2] != (job.size, job.size):
        image = cv2.resize(image, (job.size, job.size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return f"{job.image}: could not encode the resized image"
    buffer = io.BytesIO()
    np.save(buffer, label)
    out = Path(job.out)
    write_bytes(out / SEGMASK_DIR / segmask_name(job.index), buffer.getvalue())
    write_bytes(out / IMAGE_DIR / image_name(job.index), encoded.tobytes())
    return None


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {part:7s} -> {PART_CLASSES[part]} ({SEG_CLASSES[PART_CLASSES[part]]})" for part in PART_CLASSES)
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare_celeba",
        description="Format the CelebAMask-HQ raw release as the study's 3-class copy (resumable).",
        epilog=(
            "Part -> class, in painting order (later parts overwrite earlier ones, as in the\n"
            "release's g_mask.py); pixels no part covers are background (0):\n" + table + "\n\n"
            "The split is CelebA's official partition when " + MAPPING_FILE + " and\n"
            + PARTITION_FILE + " are in --raw, otherwise a seeded 80/10/10 split. Exit code 2: bad inputs."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--raw", type=Path, required=True, help="the release: CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, the attribute file"
    )
    parser.add_argument("--out", type=Path, required=True, help="where the formatted copy goes")
    parser.add_argument("--size", type=int, default=256, help="side of the square outputs (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default min(4, CPUs); 1 = no pool)")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad inputs out (counted) instead of stopping")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the 80/10/10 split (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.size < 1:
        _parser().error(f"--size must be positive, got {args.size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = prepare(args.raw, args.out, size=args.size, workers=args.workers, skip_bad=args.skip_bad, seed=args.seed)
    except BadInputs as error:
        for message in error.problems:
            print(f"bad input: {message}", file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for message in report.bad:
        print(f"skipped: {message}", file=sys.stderr)
    sizes = ", ".join(f"{name} {count}" for name, count in report.split_sizes.items())
    print(f"prepared {report.prepared}, already done {report.done}, bad {len(report.bad)} -> {report.out}")
    print(f"split ({report.split_source}): {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
