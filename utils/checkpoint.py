"""Checkpoints: atomic saves, ``weights_only`` loads, and foreign archives read without running them.

Our checkpoints hold state_dicts and plain data only, so they load with ``weights_only=True``.
The study's checkpoints also pickled the optimizer object itself (its class and the functions
it referenced), which ``weights_only`` refuses and a plain ``torch.load`` would execute.
:func:`load_untrusted` reads such an archive with an unpickler of its own that builds only
tensors and plain containers; every other object it names becomes an inert placeholder that
records what it was and never calls anything.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from utils.errors import DataError
from utils.io import atomic_write

#: torch's storage class names -> element dtype (the archive names a class per storage).
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically save a checkpoint of state_dicts and plain data."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints with ``weights_only=True``; a missing, empty or torn file names the path."""
    path = _existing(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's text would suggest weights_only=False: never for a file we cannot vouch for
        raise DataError(f"checkpoint '{path}' is not a checkpoint of this project (torn, of another format, or "
                        "naming objects a weights-only load refuses); expected a file a trial wrote") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataError(f"checkpoint '{path}' cannot be read ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint '{path}' holds a {type(state).__name__}; expected a dict with a 'model' state_dict")
    return state


def is_foreign(path: str | Path) -> bool:
    """Whether the archive names globals that ``weights_only`` refuses (a pickled object, like the study's optimizer)."""
    path = _existing(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile):
        return False
    return False


class Placeholder:
    """An object the archive named but that is never built: its name and arguments, nothing run."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._items().append((key, value))

    def append(self, value: Any) -> None:
        self._items().append(value)

    def extend(self, values: Any) -> None:
        self._items().extend(values)

    def _items(self) -> list[Any]:
        """Items the pickle added (an object built without ``__init__`` gets its list here)."""
        return self.__dict__.setdefault("items", [])

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualname}>"


def load_untrusted(path: str | Path) -> dict[str, Any]:
    """Read a torch zip archive's tensors and plain containers without executing its pickle.

    Tensors, ``OrderedDict``s, lists, dicts, numbers and strings come back as they were saved
    (on the CPU); any other object becomes a :class:`Placeholder`. Raises DataError for files
    that are not torch zip archives.
    """
    path = _existing(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise DataError(f"checkpoint '{path}' is not a torch archive (no single <name>/data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            state = _ArchiveUnpickler(archive, prefix).load()
    except zipfile.BadZipFile:
        raise DataError(f"checkpoint '{path}' is not a torch zip archive (saved by torch < 1.6, or damaged)") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError) as error:
        raise DataError(f"checkpoint '{path}' cannot be read ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint '{path}' holds a {type(state).__name__}; expected a dict with a 'model' state_dict")
    return state


class _ArchiveUnpickler(pickle.Unpickler):
    """Builds tensors from the archive's storages; returns placeholders for every other global."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, torch.Tensor] = {}
        order = f"{prefix}byteorder"
        if order in archive.namelist() and archive.read(order).strip() not in (b"little", b""):
            raise pickle.UnpicklingError("big-endian archives are not supported")

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module in ("__builtin__", "builtins") and name in ("dict", "list", "tuple", "set", "frozenset", "int", "float"):
            return _PlainFactory(name)
        return type(name, (Placeholder,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


class _PlainFactory(Placeholder):
    """A builtin type named as a factory (a defaultdict's ``dict``): recorded, never called."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.qualname = f"builtins.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return Placeholder(*args, **kwargs)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """A tensor viewing ``storage`` (a flat tensor of the archive's elements), copied out so it owns its memory."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor without storage")
    return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: Any, requires_grad: Any = False, *_: Any) -> Any:
    """A saved ``nn.Parameter`` as its plain tensor."""
    return data


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' not found")
    if path.stat().st_size == 0:
        raise DataError(f"checkpoint '{path}' is empty (0 bytes); expected a torch checkpoint (delete it and retrain)")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
