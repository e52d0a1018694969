"""Atomic artefacts, torch-free: every file a run leaves is written whole or not at all.

A write goes to a temporary sibling ``.<name>.<random>.tmp``, is fsynced and renamed over the
target, so a crash never leaves a torn file. A kill between the two steps can leave the
temporary file behind; :func:`remove_stale_temps` deletes those when a folder is reopened.
This module imports no torch, so the command-line front door can use it before any heavy work.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from utils.errors import DataError
from utils.signals import held_during_write

_TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file next to ``path``, then rename it over ``path``.

    A scheduler's stop or pre-emption signal that arrives meanwhile is delivered once the file is
    whole (:func:`utils.signals.held_during_write`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with held_during_write():
        return _write_and_rename(path, write)


def _write_and_rename(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from co-workers
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as error:  # named after the target, not the hidden temporary file (a full disk names none)
        Path(tmp).unlink(missing_ok=True)
        raise type(error)(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write bytes."""
    return atomic_write(path, lambda stream: stream.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON (indented, for people reading trial folders)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"file '{path}' not found") from None
    except UnicodeDecodeError:
        raise DataError(f"file '{path}' is not UTF-8 text; expected JSON") from None
    except json.JSONDecodeError as error:
        raise DataError(f"file '{path}' is not valid JSON ({error.msg}, line {error.lineno})") from None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [path for path in folder.glob(f".*{_TEMP_SUFFIX}") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def folder_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot become a folder to write into (it or a parent is not a folder, or the
    nearest existing folder refuses a new file); None if it can. Asked before anything is
    written, so a wrong output path is one line and leaves nothing behind; callers add the flag
    or key. Writability is probed with a temporary file, not ``os.access``: as root, access()
    says yes to ``/proc``, ``/sys`` and read-only mounts."""
    return _folder_problem(Path(path), "it")


def _folder_problem(path: Path, name: str) -> str | None:
    """:func:`folder_problem`, calling ``path`` itself ``name``."""
    for folder in (path, *path.parents):
        which = name if folder == path else f"its parent '{folder}'"
        if folder.is_dir():
            return None if _accepts_files(folder) else f"{which} is not writable"
        if folder.exists() or folder.is_symlink():
            return f"{which} exists and is not a folder"
    return None


def file_problem(path: Path | str) -> str | None:
    """Why a file cannot be written at ``path`` (see :func:`folder_problem`); None if it can."""
    path = Path(path)
    if path.name in ("", "..", "."):
        return "it is not a file name"
    if path.is_dir():
        return "it is a folder"
    return _folder_problem(path.parent, f"its folder '{path.parent}'")


def foreign_folder_problem(path: Path | str, markers: tuple[str, ...]) -> str | None:
    """Why a generator must not write into ``path``: it is a non-empty folder holding none of ``markers``
    (what an earlier run of the same generator leaves), so a typo such as ``--out /`` or ``--out ~``
    never scatters a dataset among someone's files; None if it may."""
    path = Path(path)
    if not path.is_dir() or any((path / marker).exists() for marker in markers):
        return None
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as err:  # a folder one may write into but not list
        return f"its files cannot be listed ({err.strerror or err})"
    return None if empty else "it is a non-empty folder that holds no dataset of this command"


def _accepts_files(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (a probe that is removed at once)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=_TEMP_SUFFIX)
    except OSError:
        return False
    os.close(handle)
    Path(probe).unlink(missing_ok=True)
    return True
