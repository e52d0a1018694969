"""YAML as the study wrote it, read safely: scientific floats, duplicate keys, tensor-tagged numbers.

PyYAML's SafeLoader (YAML 1.1) reads ``1e-6`` as a string and keeps the last of two equal keys
without a word; both are fixed here. The study's grid search put λ into its config as a torch
tensor, so its ``yaml.dump`` wrote ``!!python/object/apply:torch._utils._rebuild_tensor_v2``
around a pickled storage. Those tags are decoded here without torch and without running the
pickle: the storage's bytes are read by a pickle unpickler that only accepts torch's storage
type names, and a one-element tensor becomes a float. Any other Python tag is an error.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError

_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]*[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.[0-9_]+$")
_APPLY = "tag:yaml.org,2002:python/object/apply:"
_REBUILD_TENSOR = "torch._utils._rebuild_tensor_v2"
_LOAD_STORAGE = "torch.storage._load_from_bytes"
#: torch's legacy storage class names -> (struct format of one element, bytes per element).
_STORAGE_TYPES = {
    "FloatStorage": ("f", 4), "DoubleStorage": ("d", 8), "HalfStorage": ("e", 2),
    "LongStorage": ("q", 8), "IntStorage": ("i", 4), "ShortStorage": ("h", 2),
    "CharStorage": ("b", 1), "ByteStorage": ("B", 1), "BoolStorage": ("?", 1),
}


class _Storage:
    """The elements of a storage decoded from the study's tensor dump."""

    def __init__(self, values: tuple[float, ...], fmt: str) -> None:
        self.values = values
        self.fmt = fmt

    def number(self, index: int) -> float:
        """Element ``index`` as the shortest decimal that rounds to it (float32 1e-7, not 1.0000000116860974e-07)."""
        value = self.values[index]
        if self.fmt not in "fe" or not math.isfinite(value):
            return float(value)
        for digits in range(1, 18):
            short = float(f"{value:.{digits}g}")
            if struct.unpack(self.fmt, struct.pack(self.fmt, short))[0] == value:
                return short
        return float(value)


class _Loader(yaml.SafeLoader):
    """SafeLoader plus the study's numbers; refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {seen[key]}, again on line {line})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _construct_apply(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(None, None, f"unsupported Python object {suffix}", node.start_mark)
    args = loader.construct_sequence(node, deep=True)
    if suffix == _LOAD_STORAGE and len(args) == 1 and isinstance(args[0], bytes):
        return _decode_storage(args[0], node)
    if suffix == _REBUILD_TENSOR and args and isinstance(args[0], _Storage):
        storage, offset, size = args[0], int(args[1]), tuple(args[2])
        if math.prod(size) != 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"a tensor of shape {size}; only one-number tensors (a tensor-tagged λ) are read", node.start_mark)
        return storage.number(offset)
    if suffix == "collections.OrderedDict":
        return dict(args[0]) if args else {}
    raise yaml.constructor.ConstructorError(
        None, None, f"Python object '{suffix}' is not allowed in a config (only the study's tensor-tagged numbers are)",
        node.start_mark)


def _decode_storage(blob: bytes, node: yaml.Node) -> _Storage:
    """Elements of a storage in torch's legacy serialisation, read without executing anything.

    The blob is five pickles (magic number, protocol, system info, the storage reference, the
    storage keys) followed, per storage, by its element count (8 bytes) and its raw elements.
    """
    stream = io.BytesIO(blob)
    try:
        for _ in range(3):
            _StorageUnpickler(stream).load()
        reference = _StorageUnpickler(stream).load()
        _StorageUnpickler(stream).load()
        fmt, width = _STORAGE_TYPES[reference]
        count = struct.unpack("<q", stream.read(8))[0]
        values = struct.unpack(f"<{count}{fmt}", stream.read(count * width))
    except (pickle.UnpicklingError, struct.error, EOFError, KeyError, TypeError, ValueError) as error:
        raise yaml.constructor.ConstructorError(None, None, f"unreadable tensor data ({error})", node.start_mark) from None
    return _Storage(values, fmt)


class _StorageUnpickler(pickle.Unpickler):
    """Builds plain values only; a storage reference becomes its type name, any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_TYPES:
            return name
        raise pickle.UnpicklingError(f"global '{module}.{name}' refused")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and pid[1] in _STORAGE_TYPES:
            return pid[1]
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_multi_constructor(_APPLY, _construct_apply)
_Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node)))


def parse(text: str, *, source: str) -> Any:
    """Parse YAML text, or raise ConfigError naming the source and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read; expected a config of a few levels") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None


def read(path: Any) -> Any:
    """Parse a YAML file; a file that is not UTF-8 is a ConfigError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); expected a YAML file saved as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror}); expected a readable YAML file") from None
    return parse(text, source=str(path))


def read_mapping(path: Path, *, kind: str, missing: str | None = None) -> dict[Any, Any]:
    """A YAML file whose top level maps ``kind`` keys (``"config"``, ``"study"``); ``missing`` words a missing file."""
    if not path.exists():
        raise ConfigError(missing or f"{kind} file '{path}' not found; expected a YAML {kind} file")
    if not path.is_file():
        raise ConfigError(f"{kind} file '{path}' is {'a folder' if path.is_dir() else 'not a regular file'}; "
                          f"expected a YAML {kind} file")
    raw = read(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {kind} keys at the top level")
    return raw
