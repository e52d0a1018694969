"""Strict readers of the files datasets are made of: a bad file is one `DataError` line naming it.

OpenCV's ``imread`` "succeeds" on a truncated JPEG (libjpeg only warns "Premature end of JPEG
file" and paints the missing rows grey) and turns grayscale or 4-channel files into 3 channels
without a word; ``np.load`` raises ``EOFError`` on an empty file and returns an ``NpzFile`` for a
``.npz``. So images are read into memory and checked *structurally* before ``cv2.imdecode``:

* a JPEG must start with SOI (``FFD8``) and end with EOI (``FFD9``; trailing NUL padding is
  allowed), and its frame header (SOFn) gives the channel count;
* a PNG must start with its signature and end with the ``IEND`` chunk, and ``IHDR`` gives the
  channel count (palette PNGs are not label maps);
* a ``.npy`` must be a plain numeric array (no pickle, no object or string dtype, no ``.npz``).

A truncated file has lost its end, so the end marker catches truncation for certain, and the
check costs a header walk (microseconds) on bytes decoding reads anyway: ``np.fromfile`` +
``cv2.imdecode`` is as fast as ``cv2.imread``. Corruption *inside* the entropy-coded data of an
otherwise complete JPEG is not detected (no decoder reports it reliably). Torch-free, so
``data.prepare_celeba``'s worker processes use it too.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.errors import DataError

#: np.load parses the .npy header with ``ast.literal_eval``; CPython 3.11's AST builder keeps its
#: recursion depth per interpreter, so two decode threads parsing at once can fail with
#: "SystemError: AST constructor recursion depth mismatch" (seen on 3.11.7). Loads take turns.
_NPY_LOAD = threading.Lock()
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = b"\x00\x00\x00\rIHDR"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Frame headers (SOF0..SOF15); C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM and RST0..RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: PNG colour type -> channels after decoding (palette: 3, cv2 expands it to BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_PALETTE = 3
#: How far back a JPEG's EOI may sit before the end when only NUL padding follows it.
_PADDING_WINDOW = 4096
#: OpenCV's default ``CV_IO_MAX_IMAGE_PIXELS``: ``imdecode`` raises (not returns None) above it.
_MAX_PIXELS = 1 << 30

IMAGE_EXPECTED = "a complete 3-channel (RGB) JPEG or PNG image"
LABEL_EXPECTED = "a complete single-channel (grayscale) PNG label map"
NPY_EXPECTED = "a plain numeric .npy array (numpy.save)"


class BadFile(DataError):
    """One file is unusable: ``"<path>: <problem>; expected <what>"``.

    ``BadFile(message)`` alone works too: pickling and DataLoader workers re-create exceptions from
    their message, and an exception they cannot re-create surfaces as a RuntimeError traceback."""

    def __init__(self, path: Path | str, problem: str | None = None, expected: str | None = None) -> None:
        if problem is None:
            super().__init__(str(path))
            self.path: Path | None = None
            self.problem = str(path)
            return
        super().__init__(f"{path}: {problem}; expected {expected}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding its pixels."""

    format: str  # "JPEG" | "PNG"
    height: int
    width: int
    channels: int
    palette: bool = False


# ----------------------------------------------------------------------------- images


def read_bytes(path: Path | str, expected: str) -> np.ndarray:
    """The whole file as uint8 (what ``cv2.imdecode`` takes); missing and empty files are BadFile."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise BadFile(path, "file not found", expected) from None
    except OSError as error:
        raise BadFile(path, f"cannot read ({error.strerror or error})", expected) from None
    if data.size == 0:
        raise BadFile(path, "empty file (0 bytes)", expected)
    return data


def inspect_image(data: np.ndarray, path: Path | str, expected: str = IMAGE_EXPECTED) -> ImageHeader:
    """Check that ``data`` is a complete JPEG or PNG and read its header; BadFile otherwise."""
    view = memoryview(data)
    head = bytes(view[:8])
    if head.startswith(_JPEG_SOI):
        header = _jpeg_header(view, path, expected)
        if bytes(view[-2:]) != _JPEG_EOI and not bytes(view[-_PADDING_WINDOW:]).rstrip(b"\0").endswith(_JPEG_EOI):
            raise BadFile(path, "truncated JPEG (no end-of-image marker FFD9 at the end)", expected)
        return header
    if head == _PNG_SIGNATURE:
        header = _png_header(view, path, expected)
        if bytes(view[-12:]) != _PNG_IEND:
            raise BadFile(path, "truncated PNG (no IEND chunk at the end)", expected)
        return header
    raise BadFile(path, f"not a JPEG or PNG file (starts with {head[:4].hex(' ')})", expected)


def _jpeg_header(view: memoryview, path: Path | str, expected: str) -> ImageHeader:
    """Walk the marker segments up to the frame header (a few segments: APPn, DQT, SOFn)."""
    size, index = len(view), 2
    while index + 4 <= size:
        if view[index] != 0xFF:
            break
        marker = view[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in _JPEG_STANDALONE:
            index += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise BadFile(path, "JPEG without a frame header (corrupt)", expected)
        length = view[index + 2] << 8 | view[index + 3]
        if marker in _JPEG_SOF:
            if index + 10 > size:
                break
            height = view[index + 5] << 8 | view[index + 6]
            width = view[index + 7] << 8 | view[index + 8]
            return ImageHeader("JPEG", height, width, channels=view[index + 9])
        index += 2 + length
    raise BadFile(path, f"JPEG header broken or truncated at byte {index}", expected)


def _png_header(view: memoryview, path: Path | str, expected: str) -> ImageHeader:
    if len(view) < 33 or bytes(view[8:16]) != _PNG_IHDR:
        raise BadFile(path, "PNG without an IHDR header (corrupt)", expected)
    width = int.from_bytes(view[16:20], "big")
    height = int.from_bytes(view[20:24], "big")
    color_type = view[25]
    if color_type not in _PNG_CHANNELS:
        raise BadFile(path, f"PNG of unknown colour type {color_type} (corrupt)", expected)
    return ImageHeader("PNG", height, width, _PNG_CHANNELS[color_type], palette=color_type == _PNG_PALETTE)


def _decode(data: np.ndarray, header: ImageHeader, path: Path | str, flag: int, expected: str) -> np.ndarray:
    """Decode after the header check; a header declaring a giant image (a corrupt or hostile file)
    is refused before OpenCV allocates for it, and any ``cv2.error`` is the file's BadFile too."""
    if header.height * header.width > _MAX_PIXELS:
        raise BadFile(
            path, f"{header.format} header declares {header.width}x{header.height} pixels, "
            f"more than the {_MAX_PIXELS} OpenCV decodes (corrupt)", expected,
        )
    try:
        image = cv2.imdecode(data, flag)
    except cv2.error as error:  # e.g. the limit lowered through OPENCV_IO_MAX_IMAGE_PIXELS
        reason = getattr(error, "err", "") or str(error).strip().splitlines()[-1]
        raise BadFile(path, f"{header.format} data does not decode ({reason})", expected) from None
    if image is None:
        raise BadFile(path, f"{header.format} data does not decode (corrupt)", expected)
    return image


def read_color(path: Path | str, *, channels: int | None = 3) -> np.ndarray:
    """A complete JPEG/PNG as H x W x 3 uint8 **BGR** (cv2's order); ``channels`` (None: any) is checked
    against the header first, as ``cv2.IMREAD_COLOR`` would silently convert a grayscale file."""
    data = read_bytes(path, IMAGE_EXPECTED)
    header = inspect_image(data, path)
    if channels is not None and header.channels != channels:
        raise BadFile(path, f"{header.channels}-channel {header.format}", IMAGE_EXPECTED)
    return _decode(data, header, path, cv2.IMREAD_COLOR, IMAGE_EXPECTED)


def read_labels(path: Path | str) -> np.ndarray:
    """A complete single-channel PNG as its H x W integer array (8 or 16 bit), values untouched."""
    data = read_bytes(path, LABEL_EXPECTED)
    header = inspect_image(data, path, LABEL_EXPECTED)
    if header.format != "PNG":
        raise BadFile(path, f"{header.format} image (lossy compression alters label values)", LABEL_EXPECTED)
    if header.palette or header.channels != 1:
        kind = "palette" if header.palette else f"{header.channels}-channel"
        raise BadFile(path, f"{kind} PNG", LABEL_EXPECTED)
    labels = _decode(data, header, path, cv2.IMREAD_UNCHANGED, LABEL_EXPECTED)
    if labels.ndim != 2:
        raise BadFile(path, f"decodes to shape {labels.shape}", LABEL_EXPECTED)
    return labels


def read_gray(path: Path | str) -> np.ndarray:
    """A complete JPEG/PNG of any channel count as H x W uint8 (for masks that are drawn, not labelled)."""
    data = read_bytes(path, "a complete JPEG or PNG mask")
    header = inspect_image(data, path, "a complete JPEG or PNG mask")
    return _decode(data, header, path, cv2.IMREAD_GRAYSCALE, "a complete JPEG or PNG mask")


# ----------------------------------------------------------------------------- arrays


def load_npy(path: Path | str) -> np.ndarray:
    """A plain numeric ``.npy`` array, or BadFile naming the file and what is wrong with it."""
    try:
        with _NPY_LOAD:
            array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadFile(path, "file not found", NPY_EXPECTED) from None
    except EOFError:
        raise BadFile(path, "empty file", NPY_EXPECTED) from None
    except ValueError as error:
        if "Object arrays" in str(error):
            raise BadFile(path, "an object array (pickled Python objects)", NPY_EXPECTED) from None
        if "pickle" in str(error):
            raise BadFile(path, "no .npy header (a pickle or another format)", NPY_EXPECTED) from None
        raise BadFile(path, f"cannot read ({error})", NPY_EXPECTED) from None
    except OSError as error:
        raise BadFile(path, f"cannot read ({error})", NPY_EXPECTED) from None
    if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever the file is called
        close = getattr(array, "close", None)
        if close is not None:
            close()
        raise BadFile(path, f"a .npz archive, not a single array ({type(array).__name__})", NPY_EXPECTED)
    if array.dtype.kind not in "biuf":
        raise BadFile(path, f"array of dtype {array.dtype}", NPY_EXPECTED)
    return array


def npy_header(path: Path | str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` from its header (about 128 bytes read), after checking that
    the file is as long as the header says: a cheap test for truncation without loading data."""
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:  # rare 3.0 headers: let numpy parse them through a memory map
                mapped = np.load(path, mmap_mode="r", allow_pickle=False)
                return tuple(mapped.shape), mapped.dtype
            offset, size = stream.tell(), os.fstat(stream.fileno()).st_size
    except FileNotFoundError:
        raise BadFile(path, "file not found", NPY_EXPECTED) from None
    except (OSError, ValueError, EOFError) as error:
        raise BadFile(path, f"no valid .npy header ({error})", NPY_EXPECTED) from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BadFile(path, f"array of dtype {dtype}", NPY_EXPECTED)
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < needed:
        raise BadFile(path, f"truncated ({size} bytes; its header announces {shape} {dtype}, {needed} bytes)", NPY_EXPECTED)
    return tuple(shape), dtype


def check_file(path: Path | str) -> None:
    """Structural check of one file without decoding it (header and end marker); BadFile if broken."""
    if Path(path).suffix == ".npy":
        npy_header(path)
    else:
        inspect_image(read_bytes(path, IMAGE_EXPECTED), path)
