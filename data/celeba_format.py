"""The CelebAMask-HQ catalogue and file formats, shared by the config, the dataset and the preparation.

Torch-free (numpy only), so the config can check CelebA task names before anything heavy loads:
the 40 attributes and the study's short task names, the folder and file names of the raw and
formatted layouts, the part -> class map of the 3-class masks, the attribute file and the split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import DataError

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
#: The study's short names for CelebA attributes; any ``class_<Attribute>`` works as well.
CELEBA_TASK_ALIASES = {
    "class_male": "Male",
    "class_smile": "Smiling",
    "class_eyebrows": "Arched_Eyebrows",
    "class_glasses": "Eyeglasses",
}

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

IMAGE_NAME = re.compile(r"(\d+)\.jpg")
MASK_NAME = re.compile(r"(\d+)_([a-z_]+)\.png")


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
    match = IMAGE_NAME.fullmatch(name)
    if match is None:
        raise DataError(f"'{name}' is not a CelebA-HQ image name; expected <n>.jpg")
    return int(match.group(1))


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
    two spaces). The count line is optional, as some re-saved copies drop it. Anything else
    (not UTF-8, a repeated name or image, a short row) is a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"attribute file '{path}' not found; expected {ATTRIBUTE_FILE} of the CelebAMask-HQ release")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); expected the {ATTRIBUTE_FILE} text table") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, tokens) for number, tokens in lines if tokens]
    if lines and len(lines[0][1]) == 1 and lines[0][1][0].isdigit():
        lines = lines[1:]
    if not lines:
        raise DataError(f"{path}: no attribute names; expected a line of names after the count line")
    names = tuple(lines[0][1])
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise DataError(f"{path}:{lines[0][0]}: attribute names {repeated} repeat; expected each name once")
    rows: dict[str, tuple[int, ...]] = {}
    first_line: dict[str, int] = {}
    for number, tokens in lines[1:]:
        if len(tokens) != len(names) + 1:
            raise DataError(f"{path}:{number}: expected a file name and {len(names)} values, got {len(tokens)} fields")
        try:
            values = tuple(int(token) for token in tokens[1:])
        except ValueError:
            raise DataError(f"{path}:{number}: attribute values must be 1 or -1, got {' '.join(tokens[1:])!r}") from None
        if any(value not in (1, -1) for value in values):
            raise DataError(f"{path}:{number}: attribute values must be 1 or -1, got {' '.join(tokens[1:])!r}")
        if tokens[0] in rows:
            raise DataError(f"{path}:{number}: '{tokens[0]}' repeats line {first_line[tokens[0]]}; expected one row per image")
        rows[tokens[0]] = values
        first_line[tokens[0]] = number
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



def celeba_attribute(task: str) -> str | None:
    """The CelebA attribute behind a ``class_*`` task name (case-insensitive), or None."""
    if task in CELEBA_TASK_ALIASES:
        return CELEBA_TASK_ALIASES[task]
    if not task.startswith("class_"):
        return None
    wanted = task[len("class_"):].lower()
    return next((name for name in CELEBA_ATTRIBUTES if name.lower() == wanted), None)
