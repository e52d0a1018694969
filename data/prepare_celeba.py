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
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.celeba_format import (
    ATTRIBUTE_FILE,
    DEFAULT_SPLIT_SEED,
    IMAGE_DIR,
    IMAGE_NAME,
    MAPPING_FILE,
    MASK_NAME,
    PART_CLASSES,
    PARTITION_FILE,
    RAW_MASK_DIR,
    SEG_CLASSES,
    SEGMASK_DIR,
    SPLIT_FILE,
    SPLIT_NAMES,
    AttributeTable,
    format_attributes,
    image_name,
    index_of,
    official_split,
    raw_mask_path,
    read_attributes,
    seeded_split,
    segmask_name,
)
from data.files import BadFile, read_color, read_gray
from utils import cli
from utils.errors import DataError
from utils.io import folder_problem, write_bytes

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
#: The release's image side; a larger --size would only upsample (and a huge one exhaust memory).
MAX_SIZE = 1024


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


#: Bad inputs named in the one error line (``--skip-bad`` lists every one).
_SHOWN = 3


class BadInputs(DataError):
    """The raw copy has bad inputs and ``--skip-bad`` was not given; ``problems`` lists them."""

    def __init__(self, raw: Path, problems: Sequence[Problem]):
        self.problems = [problem.message for problem in problems]
        shown = "; ".join(self.problems[:_SHOWN])
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        super().__init__(
            f"{len(problems)} bad input(s) under '{raw}': {shown}{more}; "
            "fix them, or rerun with --skip-bad to leave them out (it lists each)"
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
        DataError: the raw layout is missing a folder or file, ``out`` is ``raw`` or cannot be
            a folder (a file, a read-only parent), or no image is usable.
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
    problem = folder_problem(out)
    if problem is not None:
        raise DataError(f"--out '{out}': {problem}; expected a folder for the formatted copy (or a path to create one)")


def _scan(raw: Path, out: Path, size: int, attributes: AttributeTable) -> tuple[list[_Job], list[Problem]]:
    """Pair every image with its part masks and attribute row; list whatever does not pair."""
    problems: list[Problem] = []
    images: dict[int, Path] = {}
    for path in sorted((raw / IMAGE_DIR).glob("*.jpg")):
        match = IMAGE_NAME.fullmatch(path.name)
        if match is None:
            problems.append(Problem(f"{path}: unexpected image name; expected <n>.jpg"))
        else:
            images[int(match.group(1))] = path
    parts: dict[int, dict[str, Path]] = {}
    for path in sorted((raw / RAW_MASK_DIR).rglob("*.png")):
        match = MASK_NAME.fullmatch(path.name)
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
    """Resize one image and merge its part masks; returns a message when an input is unreadable.

    Reading is strict (`data.files`): a truncated JPEG or PNG is unreadable, not a grey patch."""
    try:
        image = read_color(job.image, channels=None)  # a grayscale original becomes 3 channels, as the copy's format wants
    except BadFile as error:
        return f"{job.image}: unreadable image ({error.problem})"
    label = np.zeros((job.size, job.size), np.uint8)
    for part, path in job.parts:
        try:
            mask = read_gray(path)
        except BadFile as error:
            return f"{path}: unreadable mask ({error.problem})"
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
    parser = cli.ArgumentParser(
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
        "--raw", type=cli.path_arg, required=True, help="the release: CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, the attribute file"
    )
    parser.add_argument("--out", type=cli.path_arg, required=True, help="where the formatted copy goes")
    parser.add_argument("--size", type=int, default=256,
                        help=f"side of the square outputs, 1 to {MAX_SIZE} (the release's image side; default 256)")
    parser.add_argument("--workers", type=cli.int_at_least(1), default=None, help="worker processes (default min(4, CPUs); 1 = no pool)")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad inputs out (counted) instead of stopping")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the 80/10/10 split (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.size <= MAX_SIZE:
        _parser().error(f"--size must be 1 to {MAX_SIZE} (the release's images are {MAX_SIZE}x{MAX_SIZE}), got {args.size}")
    if args.seed < 0:  # numpy's generators take non-negative seeds only
        _parser().error(f"--seed must be a non-negative integer, got {args.seed}")

    def body() -> None:
        report = prepare(args.raw, args.out, size=args.size, workers=args.workers, skip_bad=args.skip_bad, seed=args.seed)
        for message in report.bad:
            print(f"skipped: {message}", file=sys.stderr)
        sizes = ", ".join(f"{name} {count}" for name, count in report.split_sizes.items())
        print(f"prepared {report.prepared}, already done {report.done}, bad {len(report.bad)} -> {report.out}")
        print(f"split ({report.split_source}): {sizes}")

    # One line for bad inputs too (the count and the first few); --skip-bad lists every one it leaves out.
    return cli.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
