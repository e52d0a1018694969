"""Synthetic faces in the CelebAMask-HQ raw release layout, for tests and the demo.

The real release (30000 images of 1024², REFERENCE §3) cannot travel with the project, yet the
preparation, the loader and the training must run end to end on every machine. These faces are
drawn from simple shapes in the release's exact layout (images, per-part binary masks in
``<n // 2000>/`` folders, the attribute file with its irregular spacing, optionally the CelebA
mapping and partition files), and their attributes follow what is drawn, so they are learnable:
Male ↔ short hair and beard shading, hair colour ↔ the hair attributes, Smiling ↔ mouth curve,
Arched_Eyebrows ↔ eyebrow arch, Eyeglasses ↔ the glasses (``eye_g``), and a few more. The
remaining attributes are random. Every face is drawn from ``(seed, n)``, so it does not depend
on how many faces are made.

CLI: ``python -m data.synthetic_faces --out DIR --num-images N``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.celeba_format import CELEBA_ATTRIBUTES
from data.prepare_celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PART_CLASSES,
    PARTITION_FILE,
    image_name,
    raw_mask_path,
)
from data.synthetic import out_problem, stamp
from utils import cli

#: Images in CelebA, and the first file number of its val and test partitions (1-based).
CELEBA_SIZE = 202599
CELEBA_FIRST_VAL, CELEBA_FIRST_TEST = 162771, 182638

#: Hair colours (RGB) and the attribute each one sets, if any.
HAIR_COLOURS: dict[str, tuple[tuple[float, float, float], str | None]] = {
    "black": ((28, 22, 20), "Black_Hair"),
    "brown": ((100, 62, 36), "Brown_Hair"),
    "blond": ((222, 192, 122), "Blond_Hair"),
    "gray": ((165, 165, 168), "Gray_Hair"),
    "red": ((150, 62, 32), None),
}
SKIN_TONES = np.array([(236, 200, 172), (214, 170, 140), (190, 140, 105), (150, 104, 74), (102, 70, 50)], np.float32)


@dataclass(frozen=True)
class Face:
    """What one synthetic face looks like, in coordinates where the image spans [-1, 1]²."""

    attributes: dict[str, bool]
    cx: float
    cy: float
    a: float
    b: float
    hair: str  # "short", "long" or "none"
    hair_rgb: np.ndarray
    skin_rgb: np.ndarray
    lip_rgb: np.ndarray
    cloth_rgb: np.ndarray
    background_rgb: tuple[np.ndarray, np.ndarray]
    background_wave: tuple[float, float, float]
    hair_wave: float
    hair_length: float
    brow_arch: float
    brow_thickness: float
    eye_height: float
    nose_width: float
    mouth_curve: float
    mouth_width: float
    mouth_gap: float
    lip_thickness: float
    beard: float

    @property
    def eye_y(self) -> float:
        return self.cy - 0.1 * self.b

    @property
    def eye_x(self) -> dict[str, float]:
        """Eye centres by part name; ``l_`` is the person's left, the image's right."""
        return {"l_eye": self.cx + 0.4 * self.a, "r_eye": self.cx - 0.4 * self.a}


def sample_face(rng: np.random.Generator) -> Face:
    """Draw attributes first, then the geometry and colours that show them."""
    chance = rng.random
    male = chance() < 0.45
    young = chance() < 0.75
    bald = male and chance() < 0.06
    colour = str(rng.choice(list(HAIR_COLOURS), p=[0.32, 0.26, 0.18, 0.08, 0.16] if young else [0.25, 0.2, 0.1, 0.4, 0.05]))
    smiling = chance() < 0.5
    glasses = chance() < 0.2
    arched = chance() < (0.15 if male else 0.5)
    beard = male and chance() < 0.4
    lipstick = not male and chance() < 0.5
    attributes = {name: bool(chance() < 0.15) for name in CELEBA_ATTRIBUTES}
    attributes.update(
        Male=male, Young=young, Bald=bald, Smiling=smiling, Eyeglasses=glasses, Arched_Eyebrows=arched,
        Black_Hair=False, Brown_Hair=False, Blond_Hair=False, Gray_Hair=False,
        Bangs=not bald and chance() < 0.2,
        Wavy_Hair=not bald and chance() < 0.35,
        Mouth_Slightly_Open=chance() < (0.7 if smiling else 0.1),
        High_Cheekbones=smiling and chance() < 0.7,
        Bushy_Eyebrows=chance() < 0.2,
        Wearing_Hat=chance() < 0.08,
        Wearing_Earrings=not male and chance() < 0.35,
        Wearing_Necklace=chance() < (0.05 if male else 0.2),
        Wearing_Necktie=male and chance() < 0.1,
        No_Beard=not beard,
        Goatee=beard and chance() < 0.4,
        Mustache=beard and chance() < 0.4,
        Sideburns=beard and chance() < 0.3,
        Wearing_Lipstick=lipstick,
        Heavy_Makeup=lipstick and chance() < 0.6,
        Pale_Skin=chance() < 0.1,
        Big_Lips=chance() < 0.2,
        Big_Nose=chance() < 0.2,
        Narrow_Eyes=chance() < 0.12,
        Chubby=chance() < 0.1,
        Blurry=chance() < 0.05,
        Rosy_Cheeks=not male and chance() < 0.15,
    )
    attributes["Straight_Hair"] = not bald and not attributes["Wavy_Hair"] and chance() < 0.5
    if not bald and HAIR_COLOURS[colour][1]:
        attributes[HAIR_COLOURS[colour][1]] = True
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 6, 3)
    if attributes["Pale_Skin"]:
        skin = 0.5 * skin + 0.5 * 245
    lips = np.array([185, 30, 55], np.float32) if lipstick else skin * np.array([0.85, 0.6, 0.6])
    return Face(
        attributes=attributes,
        cx=float(rng.normal(0, 0.03)),
        cy=float(-0.05 + rng.normal(0, 0.03)),
        a=float(0.36 * (1.12 if attributes["Chubby"] else 1.0) * (1 + rng.normal(0, 0.04))),
        b=float(0.48 * (1 + rng.normal(0, 0.04))),
        hair="none" if bald else "short" if male else "long",
        hair_rgb=np.array(HAIR_COLOURS[colour][0], np.float32) + rng.normal(0, 8, 3),
        skin_rgb=skin.astype(np.float32),
        lip_rgb=lips.astype(np.float32),
        cloth_rgb=rng.uniform(20, 235, 3).astype(np.float32),
        background_rgb=(rng.uniform(30, 230, 3).astype(np.float32), rng.uniform(30, 230, 3).astype(np.float32)),
        background_wave=(float(rng.uniform(1, 4)), float(rng.uniform(-3, 3)), float(rng.uniform(0, 2 * np.pi))),
        hair_wave=float(0.04 if attributes["Wavy_Hair"] else 0.0),
        hair_length=float(rng.uniform(1.2, 1.9)),
        brow_arch=float(rng.uniform(0.8, 1.2) if arched else rng.uniform(-0.1, 0.2)),
        brow_thickness=0.05 if attributes["Bushy_Eyebrows"] else 0.03,
        eye_height=0.045 if attributes["Narrow_Eyes"] else 0.075,
        nose_width=0.15 if attributes["Big_Nose"] else 0.11,
        mouth_curve=float(rng.uniform(-0.2, -0.14) if smiling else rng.uniform(-0.01, 0.04)),
        mouth_width=0.5 if smiling else 0.34,
        mouth_gap=0.09 if attributes["Mouth_Slightly_Open"] else 0.0,
        lip_thickness=0.07 if attributes["Big_Lips"] else 0.045,
        beard=float(rng.uniform(0.35, 0.6) if beard else 0.0),
    )


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: x as a row (1×S), y as a column (S×1), to broadcast."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    return axis[None, :], axis[:, None]


def part_masks(face: Face, size: int) -> dict[str, np.ndarray]:
    """Boolean masks of the release's 18 parts at ``size``², overlapping the way the release's
    annotations do (skin under the face parts, hair over the forehead)."""
    x, y = _grid(size)
    f = face

    def ellipse(cx: float, cy: float, ax: float | np.ndarray, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    skin = ellipse(f.cx, f.cy, f.a, f.b)
    face_open = skin & (y > f.cy - f.b * (0.4 if f.attributes["Bangs"] else 0.68))
    wave = f.hair_wave * np.sin(y * 14)
    if f.hair == "short":
        hair = ellipse(f.cx, f.cy - 0.03, f.a * 1.12 + wave, f.b * 1.1) & (y < f.cy - 0.3 * f.b)
    elif f.hair == "long":
        side = np.abs(x - f.cx)
        curtains = (side > 0.55 * f.a) & (side < 1.3 * f.a + wave) & (y > f.cy) & (y < f.cy + f.hair_length * f.b)
        hair = ellipse(f.cx, f.cy - 0.02, f.a * 1.3 + wave, f.b * 1.12) | curtains
    else:
        hair = np.zeros((size, size), bool)
    hair &= ~face_open
    hat_brim = (np.abs(x - f.cx) < 1.35 * f.a) & (np.abs(y - (f.cy - 0.55 * f.b)) < 0.05 * f.b)
    hat = (ellipse(f.cx, f.cy - 0.6 * f.b, 1.15 * f.a, 0.6 * f.b) & (y < f.cy - 0.55 * f.b)) | hat_brim
    cloth = ellipse(f.cx, f.cy + f.b + 0.55, 0.95, 0.42) & ~hair
    neck = (np.abs(x - f.cx) < 0.42 * f.a) & (y > f.cy) & ~skin & ~cloth & ~hair
    masks = {
        "skin": skin,
        "nose": ellipse(f.cx, f.cy + 0.12 * f.b, f.nose_width * f.a * 2, 0.2 * f.b),
        "eye_g": _glasses(x, y, face) & f.attributes["Eyeglasses"],
        **{name: ellipse(ex, f.eye_y, 0.2 * f.a, f.eye_height * f.b) for name, ex in f.eye_x.items()},
        **_brows(x, y, face),
        "l_ear": ellipse(f.cx + 0.98 * f.a, f.cy + 0.02 * f.b, 0.14 * f.a, 0.2 * f.b) & ~skin,
        "r_ear": ellipse(f.cx - 0.98 * f.a, f.cy + 0.02 * f.b, 0.14 * f.a, 0.2 * f.b) & ~skin,
        **_mouth(x, y, face),
        "hair": hair,
        "hat": hat & f.attributes["Wearing_Hat"],
        "ear_r": (ellipse(f.cx + 0.98 * f.a, f.cy + 0.3 * f.b, 0.035, 0.035)
                  | ellipse(f.cx - 0.98 * f.a, f.cy + 0.3 * f.b, 0.035, 0.035)) & f.attributes["Wearing_Earrings"],
        "neck_l": neck & (np.abs(y - (f.cy + f.b + 0.08)) < 0.02) & f.attributes["Wearing_Necklace"],
        "neck": neck,
        "cloth": cloth,
    }
    return {part: np.broadcast_to(masks[part], (size, size)) for part in PART_CLASSES}


def _glasses(x: np.ndarray, y: np.ndarray, f: Face) -> np.ndarray:
    """Both lenses and the bridge (the release's ``eye_g`` covers the whole glasses)."""
    bridge = (np.abs(x - f.cx) < 0.16 * f.a) & (np.abs(y - f.eye_y + 0.03 * f.b) < 0.02 * f.b)
    return _lenses(x, y, f) | bridge


def _lenses(x: np.ndarray, y: np.ndarray, f: Face, *, scale: float = 1.0) -> np.ndarray:
    lenses = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    for ex in f.eye_x.values():
        lenses |= ((x - ex) / (0.27 * scale * f.a)) ** 2 + ((y - f.eye_y) / (0.17 * scale * f.b)) ** 2 <= 1
    return lenses


def _brows(x: np.ndarray, y: np.ndarray, f: Face) -> dict[str, np.ndarray]:
    """Eyebrows: an arched brow's ends drop below its middle, a straight one stays level."""
    brows = {}
    for name, ex in f.eye_x.items():
        dx = (x - ex) / (0.26 * f.a)
        centre = f.eye_y - 0.24 * f.b + f.brow_arch * 0.2 * f.b * dx**2
        brows[name.replace("eye", "brow")] = (np.abs(dx) < 1) & (np.abs(y - centre) < f.brow_thickness * f.b)
    return brows


def _mouth(x: np.ndarray, y: np.ndarray, f: Face) -> dict[str, np.ndarray]:
    """Lips along a parabola: corners above the middle (a smile) or about level."""
    dx = (x - f.cx) / (f.mouth_width * f.a)
    inside = np.abs(dx) < 1
    taper = np.sqrt(np.clip(1 - dx**2, 0, 1))
    middle = f.cy + 0.55 * f.b + f.mouth_curve * f.b * (dx**2 - 0.5)
    gap, lip = f.mouth_gap * f.b * taper / 2, f.lip_thickness * f.b * np.maximum(taper, 0.4)
    return {
        "mouth": inside & (y >= middle - gap) & (y < middle + gap),
        "u_lip": inside & (y >= middle - gap - lip) & (y < middle - gap),
        "l_lip": inside & (y >= middle + gap) & (y < middle + gap + 1.2 * lip),
    }


def draw_face(face: Face, masks: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The RGB uint8 image of ``face`` painted from ``masks`` (back to front)."""
    size = masks["skin"].shape[0]
    x, y = _grid(size)
    f = face
    mix = 0.5 + 0.5 * np.sin(np.pi * (f.background_wave[0] * x + f.background_wave[1] * y) + f.background_wave[2])
    low, high = f.background_rgb
    image = (low + (high - low) * mix[..., None]).astype(np.float32)
    shade = (1.0 - 0.25 * (((x - f.cx) / f.a) ** 2 + ((y - f.cy) / f.b) ** 2))[..., None]
    skin = f.skin_rgb * np.clip(shade, 0.7, 1.0)

    def paint(part: str | np.ndarray, colour: np.ndarray) -> None:
        """Colour the pixels of a part (by name) or of a mask; ``colour`` is RGB or an image."""
        mask = masks[part] if isinstance(part, str) else part
        image[mask] = colour[mask] if colour.ndim == 3 else colour

    paint("cloth", f.cloth_rgb)
    paint("neck", f.skin_rgb * 0.85)
    paint("neck_l", np.array([212, 175, 55], np.float32))
    paint("l_ear", f.skin_rgb * 0.9)
    paint("r_ear", f.skin_rgb * 0.9)
    paint("skin", skin)
    if f.beard:
        paint(masks["skin"] & (y > f.cy + 0.3 * f.b), skin * (1 - f.beard) + f.hair_rgb * f.beard)
    if f.attributes["Rosy_Cheeks"]:
        cheeks = masks["skin"] & (np.abs(np.abs(x - f.cx) - 0.5 * f.a) < 0.12 * f.a) & (np.abs(y - f.cy - 0.25 * f.b) < 0.1 * f.b)
        paint(cheeks, np.array([225, 120, 120], np.float32))
    paint("nose", skin * 0.88)
    for eye, ex in f.eye_x.items():
        paint(eye, np.array([245, 245, 240], np.float32))
        paint(masks[eye] & (np.abs(x - ex) < 0.07 * f.a), np.array([60, 40, 30], np.float32))  # iris
    paint("l_brow", f.hair_rgb * 0.7)
    paint("r_brow", f.hair_rgb * 0.7)
    paint("u_lip", f.lip_rgb)
    paint("l_lip", f.lip_rgb)
    paint("mouth", np.array([235, 235, 225] if f.attributes["Smiling"] else [70, 15, 20], np.float32))  # a smile shows teeth
    paint(masks["eye_g"] & ~_lenses(x, y, f, scale=0.7), np.array([20, 20, 25], np.float32))  # frames and bridge
    paint("hair", f.hair_rgb * (0.9 + 0.1 * np.sin(x * 40 + y * 7))[..., None])
    paint("hat", f.cloth_rgb[::-1].copy())  # the cloth colour with R and B swapped
    paint("ear_r", np.array([230, 200, 80], np.float32))
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    if f.attributes["Blurry"]:
        image = cv2.GaussianBlur(image, (0, 0), size / 96)
    return np.clip(image, 0, 255).astype(np.uint8)


def attribute_line(name: str, attributes: dict[str, bool], rng: np.random.Generator) -> str:
    """One row of the attribute file, with the release's mix of one and two spaces."""
    gaps = rng.choice([" ", "  "], size=len(CELEBA_ATTRIBUTES), p=[0.7, 0.3])
    return name + "".join(gap + ("1" if attributes[attr] else "-1") for gap, attr in zip(gaps, CELEBA_ATTRIBUTES))


def make_celeba_raw(
    root: str | Path,
    *,
    num_images: int = 200,
    image_size: int = 128,
    mask_size: int = 64,
    seed: int = 0,
    with_mapping: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``num_images`` synthetic faces into ``root`` in the raw release layout.

    Args:
        image_size, mask_size: sides of the images and of the part masks (the release has
            1024 and 512).
        with_mapping: also write ``CelebA-HQ-to-CelebA-mapping.txt`` and CelebA's
            ``list_eval_partition.txt`` (the official split), for random CelebA files.
    """
    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rows = [str(num_images), " ".join(CELEBA_ATTRIBUTES) + " "]
    for index in tqdm(range(num_images), desc="faces", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, index])
        face = sample_face(rng)
        image = draw_face(face, part_masks(face, image_size), rng)
        cv2.imwrite(str(root / IMAGE_DIR / image_name(index)), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        for part, mask in part_masks(face, mask_size).items():
            if mask.any():
                path = raw_mask_path(root, index, part)
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
        rows.append(attribute_line(image_name(index), face.attributes, rng))
    (root / ATTRIBUTE_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    if with_mapping:
        _write_mapping(root, num_images, seed)
    return root


def _write_mapping(root: Path, num_images: int, seed: int) -> None:
    """The HQ → CelebA mapping for random CelebA files, and CelebA's partition of those files."""
    originals = np.random.default_rng(seed).choice(CELEBA_SIZE, size=num_images, replace=False)
    mapping = ["idx         orig_idx    orig_file"]
    mapping += [f"{index:<12d}{orig:<12d}{orig + 1:06d}.jpg" for index, orig in enumerate(originals)]
    (root / MAPPING_FILE).write_text("\n".join(mapping) + "\n", encoding="utf-8")
    partition = [f"{orig + 1:06d}.jpg {celeba_partition(orig + 1)}" for orig in sorted(originals)]
    (root / PARTITION_FILE).write_text("\n".join(partition) + "\n", encoding="utf-8")


def celeba_partition(file_number: int) -> int:
    """CelebA's official partition of its file ``<number>.jpg``: 0 train, 1 val, 2 test."""
    return 0 if file_number < CELEBA_FIRST_VAL else 1 if file_number < CELEBA_FIRST_TEST else 2


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m data.synthetic_faces", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=cli.path_arg, required=True, help="folder for the raw-layout copy (new, empty, or an earlier one)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--mask-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-mapping", action="store_true", help="also write the CelebA mapping and partition files")
    args = parser.parse_args(argv)
    if min(args.num_images, args.image_size, args.mask_size) < 1:
        parser.error("--num-images, --image-size and --mask-size must be positive")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: expected a non-negative integer")
    problem = out_problem(args.out)
    if problem is not None:  # before anything is written
        parser.error(f"--out '{args.out}': {problem}; expected a folder to write the raw-layout copy into")

    def body() -> None:
        settings = dict(num_images=args.num_images, image_size=args.image_size, mask_size=args.mask_size,
                        seed=args.seed, with_mapping=args.with_mapping)
        root = make_celeba_raw(args.out, **settings, progress=True)
        stamp(root, {"layout": "celeba_raw", **settings})
        print(f"wrote {args.num_images} synthetic faces in the CelebAMask-HQ raw layout to {root}")

    return cli.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
