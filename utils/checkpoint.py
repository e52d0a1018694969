"""Atomic artefacts and safe checkpoint loading.

Every file a run leaves is written to a temporary sibling and renamed into place, so a crash
never leaves a torn file; checkpoints hold tensors and plain data only and load with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from utils.errors import DataError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from co-workers
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
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


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    except json.JSONDecodeError as error:
        raise DataError(f"file '{path}' is not valid JSON ({error.msg}, line {error.lineno})") from None


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically save a checkpoint of state_dicts and plain data."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or torn file names the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DataError(f"checkpoint '{path}' cannot be read ({str(error).splitlines()[0]})") from None
