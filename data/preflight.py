"""Pre-flight: say what is wrong with a data folder within a second, before minutes of decoding.

``data.build`` runs it on every dataset after reading the splits and before any cache is built.
What it checks, and what that costs on NYUD_MT (1449 samples) or CelebA (30k):

* the split files (``read_id_list``: exist, UTF-8, no repeated ids) and whether the
  splits are disjoint (``check_disjoint``): parsing a few kB of text;
* that every listed sample has every file its tasks need (``check``): one directory listing per
  folder (``os.scandir``, about a microsecond a file, no ``stat`` per file); the error names the
  first missing file and says how many are missing;
* that a sample of ``SAMPLE_PER_SPLIT`` evenly spaced samples per split reads exactly as the
  cache will read it: strict decoding (``data.files``: truncated, empty, pickled, wrong channel
  count), array shapes against their image, label ranges against the layout and
  ``num_seg_classes``, NaN/Inf in images and edge maps. A problem every file shares (another
  convention, a config that does not fit the data) shows in the first one. About ten samples,
  tens of milliseconds at 480x640.

The cache then decodes every file with the same strict readers, so a problem confined to one
file is still reported during the build (one line naming it), only not in the first second;
this split of work keeps the fast path fast (no file is opened twice except the sample).

A problem of one sample (a missing or broken file, a missing attribute row) makes it a *bad
sample*: with ``skip_bad_samples: true`` it is left out and counted instead of raised (see
``data.cache.DenseDataset``). A problem of the folder (a missing folder or split file, a split
file that breaks the rules) and a config that does not fit the data (`ConfigError`) always raise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from data.cache import Source
from utils.errors import DataError

log = logging.getLogger(__name__)

#: Samples per split that the pre-flight decodes: the first, the middle and the last.
SAMPLE_PER_SPLIT = 3

#: Bad samples per split: ``{split: {key: problem}}``, in the split's order.
BadSamples = dict[str, dict[str, str]]
#: ``(split, key, problem)`` of one bad sample.
Problem = tuple[str, str, str]
#: A layout's check of every sample: its problems and a summary of their count (``"3 of 20 images"``).
SampleCheck = Callable[[Mapping[str, Sequence[str]]], tuple[list[Problem], Callable[[int], str]]]


def read_id_list(path: Path, *, expected: str) -> list[str]:
    """The ids of a split file, one a line (blank lines are skipped); DataError naming the file (and
    line) when it is missing, empty, not UTF-8, or holds a line of several fields or a repeated id."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; expected {expected}, one id a line") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error}); expected {expected}, one id a line") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); expected {expected}, one id a line") from None
    ids: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 1:
            raise DataError(f"{path}:{number}: {len(fields)} fields {line.strip()!r}; expected {expected}, one id a line")
        key = fields[0]
        if key in seen:
            raise DataError(f"{path}:{number}: id '{key}' repeats line {seen[key]}; expected each id once")
        seen[key] = number
        ids.append(key)
    if not ids:
        raise DataError(f"{path}: no ids; expected {expected}, one id a line")
    return ids


def check_disjoint(splits: Mapping[str, Sequence[str]], where: Mapping[str, str]) -> None:
    """Warn, once per pair of splits, when samples are in two of them (a test set seen in training
    would go unnoticed); ``where`` names the file (or entry) each split came from. A warning, not
    an error: a release may overlap on purpose (the study's ``meta_gt_sets``)."""
    owner: dict[str, str] = {}
    for name, keys in splits.items():
        for earlier in dict.fromkeys(owner[key] for key in keys if key in owner):
            shared = [key for key in keys if owner.get(key) == earlier]
            log.warning("%s: %d sample(s) also in %s (e.g. '%s'); the splits are not disjoint",
                        where[name], len(shared), where[earlier], shared[0])
        owner.update({key: name for key in keys if key not in owner})


def check(
    source: Source,
    splits: Mapping[str, Sequence[str]],
    *,
    skip_bad: bool = False,
    checks: Sequence[SampleCheck] = (),
) -> BadSamples:
    """Run the pre-flight on ``source``'s samples; returns the bad samples (only with ``skip_bad``,
    otherwise the first problem raises). ``checks`` adds per-sample checks of a layout (attribute rows)."""
    bad: BadSamples = {name: {} for name in splits}
    for run in (_missing_files(source), *checks):
        problems, summary = run(splits)
        _settle(problems, summary, bad, skip_bad)
    for name, keys in splits.items():
        for key in sample([key for key in keys if key not in bad[name]]):
            try:
                source.read(key)
            except DataError as error:
                if not skip_bad:
                    raise
                bad[name][key] = str(error)
    return bad


def sample(keys: Sequence[str], count: int = SAMPLE_PER_SPLIT) -> list[str]:
    """``count`` evenly spaced keys, the first and the last included (all of them if fewer)."""
    if len(keys) <= count:
        return list(keys)
    return [keys[round(index * (len(keys) - 1) / (count - 1))] for index in range(count)]


def _missing_files(source: Source) -> SampleCheck:
    """One problem per missing file, found by listing each folder once; a missing folder raises."""

    def run(splits: Mapping[str, Sequence[str]]) -> tuple[list[Problem], Callable[[int], str]]:
        listings: dict[Path, set[str]] = {}
        problems = []
        total = 0
        for name, keys in splits.items():
            for key in keys:
                for folder, file in source.file_names(key):
                    total += 1
                    listing = listings.get(folder)
                    if listing is None:
                        listing = listings[folder] = _list_files(folder, file, key, name)
                    if file not in listing:
                        problems.append((name, key, f"{folder / file}: file not found; expected it for sample '{key}' of the {name} split"))
        return problems, lambda count: f"{count} of the {total} files the splits need are missing"

    return run


def _list_files(folder: Path, file: str, key: str, split: str) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(
            f"{folder}: folder not found; expected it to hold {file} (sample '{key}' of the {split} split) "
            "and the other samples' files"
        ) from None
    except OSError as error:
        raise DataError(f"{folder}: cannot list ({error.strerror or error}); expected a readable folder") from None


def _settle(problems: Sequence[Problem], summary: Callable[[int], str], bad: BadSamples, skip_bad: bool) -> None:
    """Raise the first problem with the count of all, or (``skip_bad``) mark their samples bad."""
    if not problems:
        return
    if not skip_bad:
        raise DataError(f"{problems[0][2]} ({summary(len(problems))})")
    for name, key, problem in problems:
        bad[name].setdefault(key, problem)
