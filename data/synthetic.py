"""Synthetic NYU-v2-like datasets written in the real on-disk layouts (NYUD_MT and MTAN).

Tests, demos and CI need data that exercises every loader path and that a network can learn
from, without downloading NYU-v2. Each scene is ray cast analytically: a box-shaped room
(floor, walls, ceiling, with pictures, doors and windows on the walls) holding boxes, spheres
and cylinders whose shape, size, colour and texture depend on their class. Depth, normals,
labels and edges therefore agree with each other, and the image is the albedo shaded by the
normals (Lambert), so every task is predictable from the image. Like real Kinect data, labels
have void pixels (borders, object boundaries, unlabelled blobs) and depth has holes (borders,
glass and screens, random dropouts), with zero normals where depth is invalid.

Conventions: camera frame x right, y down, z forward; depth is the z coordinate in metres;
normals are unit vectors in the camera frame, facing the camera.

Command line: ``python -m data.synthetic --out DIR [--layout nyud|mtan] [--num-images N]
[--height H --width W] [--seed S] [--test-fraction F]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils import cli
from utils.config import MAX_IMAGE_SIDE
from utils.io import folder_problem, foreign_folder_problem, write_json

log = logging.getLogger(__name__)

VOID = -1
_MATERIAL_SALT = 7919  # seeds the per-class materials, identical in every scene and dataset
_LIGHT_AMBIENT = 0.35


@dataclass(frozen=True)
class ClassRoles:
    """Which 0-based class ids play which part in a scene."""

    wall: int
    floor: int
    ceiling: int
    decor: tuple[int, ...]  # flat things on walls: pictures, doors, windows
    objects: tuple[int, ...]  # free-standing things on the floor
    no_depth: frozenset[int]  # glass and screens: the depth sensor sees nothing there


def class_roles(num_classes: int) -> ClassRoles:
    """NYU-40 and MTAN-13 roles match the real class names; other counts get a generic split."""
    if num_classes == 40:
        return ClassRoles(
            wall=0, floor=1, ceiling=21,
            decor=(7, 8, 10, 12, 15, 18, 29),  # door, window, picture, blinds, curtain, mirror, whiteboard
            objects=tuple(c for c in range(40) if c not in {0, 1, 21, 7, 8, 10, 12, 15, 18, 29}),
            no_depth=frozenset({8, 18, 24}),  # window, mirror, television
        )
    if num_classes == 13:
        return ClassRoles(
            wall=11, floor=4, ceiling=2, decor=(7, 12),  # painting, window
            objects=(0, 1, 3, 5, 6, 8, 9, 10), no_depth=frozenset({12, 10}),  # window, tv
        )
    if num_classes < 5:
        raise ValueError(f"num_classes must be at least 5 (wall, floor, ceiling, decor, object), got {num_classes}")
    return ClassRoles(wall=0, floor=1, ceiling=2, decor=(3,), objects=tuple(range(4, num_classes)), no_depth=frozenset({3}))


@dataclass(frozen=True)
class Scene:
    """One rendered view: image, labels and geometry at H x W."""

    image: np.ndarray  # uint8 H x W x 3 RGB
    label: np.ndarray  # int16 H x W, class ids 0..K-1, VOID = -1
    depth: np.ndarray  # float32 H x W metres, 0 = invalid
    normals: np.ndarray  # float32 H x W x 3 unit vectors, zero where invalid
    edge: np.ndarray  # float32 H x W in [0, 1]
    focal: float  # pixels; principal point at the image centre


@dataclass(frozen=True)
class _Material:
    colour: np.ndarray  # RGB albedo in [0, 1]
    pattern: str  # "plain" | "stripes" | "checker" | "waves"
    frequency: float  # cycles per metre
    direction: np.ndarray  # unit vector for stripes and waves
    amplitude: float


@dataclass(frozen=True)
class _Surface:
    label: int
    material: _Material


def _class_material(cls: int) -> _Material:
    """The same material for a class in every scene, so appearance predicts the class."""
    rng = np.random.default_rng([_MATERIAL_SALT, cls])
    direction = rng.normal(size=3)
    return _Material(
        colour=rng.uniform(0.15, 0.95, size=3),
        pattern=str(rng.choice(["plain", "stripes", "checker", "waves"])),
        frequency=float(rng.uniform(1.5, 8.0)),
        direction=direction / np.linalg.norm(direction),
        amplitude=float(rng.uniform(0.15, 0.45)),
    )


def _class_shape(cls: int) -> tuple[str, np.ndarray]:
    """A class's primitive and typical size (width, height, depth in metres)."""
    rng = np.random.default_rng([_MATERIAL_SALT + 1, cls])
    shape = str(rng.choice(["box", "box", "cylinder", "sphere"]))
    return shape, rng.uniform([0.3, 0.2, 0.3], [1.4, 1.5, 1.1])


def _instance_material(cls: int, rng: np.random.Generator) -> _Material:
    base = _class_material(cls)
    colour = np.clip(base.colour + rng.normal(0.0, 0.04, size=3), 0.05, 1.0)
    return _Material(colour, base.pattern, base.frequency, base.direction, base.amplitude)


@dataclass(frozen=True)
class _Room:
    """World coordinates (metres) of the room's planes; the camera is at the origin."""

    left: float
    right: float
    back: float
    floor: float
    height: float

    @property
    def ceiling(self) -> float:
        return self.floor - self.height

    def walls(self) -> list[tuple[int, float, tuple[float, float, float]]]:
        """(axis, coordinate, inward normal) of the left, right and back walls."""
        return [(0, self.left, (1.0, 0.0, 0.0)), (0, self.right, (-1.0, 0.0, 0.0)), (2, self.back, (0.0, 0.0, -1.0))]


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: pitch (positive looks down) then yaw (positive looks right)."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    yaw_m = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    pitch_m = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    return yaw_m @ pitch_m


class _Canvas:
    """A z-buffer over the camera rays: the nearest surface, its normal and its surface index."""

    def __init__(self, rays: np.ndarray) -> None:
        self.rays = rays  # H x W x 3 world directions, camera-frame z component 1
        self.t = np.full(rays.shape[:2], np.inf)
        self.normals = np.zeros(rays.shape)
        self.surface = np.full(rays.shape[:2], -1, dtype=np.int32)

    def draw(self, t: np.ndarray, normals: np.ndarray, surface: int) -> None:
        """Keep the hits of one surface that are nearer than what is drawn so far."""
        nearer = t < self.t
        self.t[nearer] = t[nearer]
        self.normals[nearer] = np.broadcast_to(normals, self.rays.shape)[nearer]
        self.surface[nearer] = surface

    def points(self) -> np.ndarray:
        return self.rays * self.t[..., None]


def _plane_hits(rays: np.ndarray, axis: int, value: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = value / rays[..., axis]
    return np.where(t > 0, t, np.inf)


def _box_hits(rays: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test against an axis-aligned box; normals along the axis of entry."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / rays, hi / rays
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    entry_axis = np.argmax(near, axis=-1)
    t_near, t_far = near.max(axis=-1), far.min(axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    normals = np.eye(3)[entry_axis]
    return np.where(hit, t_near, np.inf), normals


def _sphere_hits(rays: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.einsum("hwc,hwc->hw", rays, rays)
    b = rays @ centre
    disc = b * b - a * (centre @ centre - radius * radius)
    t = (b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc > 0) & (t > 0), t, np.inf)
    normals = (rays * np.where(np.isfinite(t), t, 0.0)[..., None] - centre) / radius
    return t, normals


def _cylinder_hits(
    rays: np.ndarray, centre_xz: np.ndarray, radius: float, y_top: float, y_bottom: float
) -> tuple[np.ndarray, np.ndarray]:
    """A vertical cylinder standing on the floor: side and top cap."""
    rx, ry, rz = rays[..., 0], rays[..., 1], rays[..., 2]
    cx, cz = centre_xz
    a = rx * rx + rz * rz
    b = rx * cx + rz * cz
    disc = b * b - a * (cx * cx + cz * cz - radius * radius)
    t_side = (b - np.sqrt(np.maximum(disc, 0.0))) / a
    y_side = t_side * ry
    t_side = np.where((disc > 0) & (t_side > 0) & (y_side >= y_top) & (y_side <= y_bottom), t_side, np.inf)
    t_cap = _plane_hits(rays, 1, y_top)
    finite_cap = np.where(np.isfinite(t_cap), t_cap, 0.0)
    inside_cap = (rx * finite_cap - cx) ** 2 + (rz * finite_cap - cz) ** 2 <= radius * radius
    t_cap = np.where(inside_cap, t_cap, np.inf)
    t_finite = np.where(np.isfinite(t_side), t_side, 0.0)
    side_normals = np.stack([rx * t_finite - cx, np.zeros_like(rx), rz * t_finite - cz], axis=-1) / radius
    use_cap = t_cap < t_side
    normals = np.where(use_cap[..., None], np.array([0.0, 1.0, 0.0]), side_normals)
    return np.minimum(t_side, t_cap), normals


def _texture(material: _Material, points: np.ndarray) -> np.ndarray:
    """A per-pixel brightness factor from world coordinates (N x 3) -> N."""
    if material.pattern == "stripes":
        pattern = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * material.frequency * (points @ material.direction)))
    elif material.pattern == "checker":
        pattern = np.floor(points * material.frequency * 2).sum(axis=-1) % 2
    elif material.pattern == "waves":
        phase = 2 * np.pi * material.frequency * points
        pattern = 0.5 + 0.25 * (np.sin(phase[:, 0] + phase[:, 1]) + np.sin(phase[:, 2] - 0.7 * phase[:, 1]))
    else:
        pattern = np.full(len(points), 0.5)
    return 1.0 - material.amplitude + material.amplitude * pattern


def _ellipses(shape: tuple[int, int], count: int, max_radius: float, rng: np.random.Generator) -> np.ndarray:
    """A mask of `count` random ellipses with radii up to `max_radius` pixels."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(1.0, max_radius, size=2)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    return mask


def _border(shape: tuple[int, int], width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if width > 0:
        mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return mask


def _label_boundaries(label: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (and those neighbours)."""
    edge = np.zeros(label.shape, dtype=bool)
    horizontal = label[:, 1:] != label[:, :-1]
    vertical = label[1:] != label[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    return edge


def _depth_discontinuities(depth: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Relative Sobel gradient of depth above `threshold`: occlusion boundaries."""
    gx = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    return np.hypot(gx, gy) / (8.0 * np.maximum(depth, 1e-3)) > threshold


class _SceneBuilder:
    """Draws one random room and its contents into a canvas, recording each surface's class."""

    def __init__(self, rng: np.random.Generator, rays: np.ndarray, roles: ClassRoles) -> None:
        self.rng, self.roles = rng, roles
        self.canvas = _Canvas(rays)
        self.surfaces: list[_Surface] = []
        self.walls: list[tuple[int, int]] = []  # (surface index, axis of its normal)

    def add(self, label: int, material: _Material) -> int:
        self.surfaces.append(_Surface(label, material))
        return len(self.surfaces) - 1

    def room(self) -> _Room:
        """Floor, ceiling and three walls, axis-aligned in the world frame (y points down)."""
        rng, roles = self.rng, self.roles
        room = _Room(
            left=-rng.uniform(1.2, 3.0), right=rng.uniform(1.2, 3.0), back=rng.uniform(3.5, 7.0),
            floor=rng.uniform(1.0, 1.6),  # the camera's height above the floor
            height=rng.uniform(2.5, 3.2),
        )
        wall_material = _instance_material(roles.wall, rng)
        planes = [
            (1, room.floor, (0.0, -1.0, 0.0), roles.floor, _instance_material(roles.floor, rng)),
            (1, room.ceiling, (0.0, 1.0, 0.0), roles.ceiling, _instance_material(roles.ceiling, rng)),
        ]
        planes += [(axis, value, normal, roles.wall, wall_material) for axis, value, normal in room.walls()]
        for axis, value, normal, label, material in planes:
            surface = self.add(label, material)
            self.canvas.draw(_plane_hits(self.canvas.rays, axis, value), np.array(normal), surface)
            if label == roles.wall:
                self.walls.append((surface, axis))
        return room

    def decor(self, room: _Room) -> None:
        """Pictures, doors and windows: flat rectangles that change labels and albedo, not geometry."""
        rng, canvas = self.rng, self.canvas
        points = canvas.points()
        for _ in range(int(rng.integers(0, 3))):
            cls = int(rng.choice(self.roles.decor))
            wall, axis = self.walls[int(rng.integers(len(self.walls)))]
            along, extent = (2, (0.0, room.back)) if axis == 0 else (0, (room.left, room.right))
            width, height = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.6)
            start = rng.uniform(extent[0], max(extent[0], extent[1] - width))
            top = rng.uniform(room.ceiling + 0.2, max(room.ceiling + 0.2, room.floor - height))
            inside = (
                (canvas.surface == wall)
                & (points[..., along] >= start) & (points[..., along] <= start + width)
                & (points[..., 1] >= top) & (points[..., 1] <= top + height)
            )
            canvas.surface[inside] = self.add(cls, _instance_material(cls, rng))

    def objects(self, room: _Room) -> None:
        """Free-standing primitives on the floor, sized and shaped by class."""
        rng, rays = self.rng, self.canvas.rays
        left, right, back, floor = room.left, room.right, room.back, room.floor
        for _ in range(int(rng.integers(3, 8))):
            cls = int(rng.choice(self.roles.objects))
            shape, size = _class_shape(cls)
            width, height, depth = size * rng.uniform(0.8, 1.2, size=3)
            x = rng.uniform(left + width / 2, right - width / 2)
            z = rng.uniform(1.3 + depth / 2, back - depth / 2)
            surface = self.add(cls, _instance_material(cls, rng))
            if shape == "box":
                lo = np.array([x - width / 2, floor - height, z - depth / 2])
                t, normals = _box_hits(rays, lo, lo + np.array([width, height, depth]))
            elif shape == "sphere":
                radius = width / 2
                t, normals = _sphere_hits(rays, np.array([x, floor - radius, z]), radius)
            else:
                t, normals = _cylinder_hits(rays, np.array([x, z]), width / 2, floor - height, floor)
            self.canvas.draw(t, normals, surface)


def render_scene(
    rng: np.random.Generator, *, height: int, width: int, roles: ClassRoles
) -> Scene:
    """Ray cast one random room with objects; everything vectorised over the pixels."""
    focal = width * rng.uniform(0.75, 0.9)
    rotation = _rotation(yaw=rng.uniform(-0.3, 0.3), pitch=rng.uniform(-0.05, 0.3))
    v, u = np.mgrid[0:height, 0:width] + 0.5
    camera_rays = np.stack([(u - width / 2) / focal, (v - height / 2) / focal, np.ones_like(u)], axis=-1)
    builder = _SceneBuilder(rng, camera_rays @ rotation.T, roles)
    room = builder.room()
    builder.decor(room)
    builder.objects(room)

    canvas, surfaces = builder.canvas, builder.surfaces
    points = canvas.points()
    normals = canvas.normals / np.linalg.norm(canvas.normals, axis=-1, keepdims=True)
    facing_away = np.einsum("hwc,hwc->hw", normals, canvas.rays) > 0
    normals[facing_away] *= -1.0
    label = np.array([s.label for s in surfaces], dtype=np.int16)[canvas.surface]
    depth = canvas.t.astype(np.float32)  # camera-frame z, since camera rays have z = 1
    image = _shade(rng, canvas.surface, surfaces, points, normals, room)
    edge = (_label_boundaries(label) | _depth_discontinuities(depth)).astype(np.float32)
    label, depth, normals_cam = _degrade(rng, label, depth, normals @ rotation, roles)
    return Scene(image, label, depth, normals_cam.astype(np.float32), edge, float(focal))


def _shade(
    rng: np.random.Generator,
    surface_map: np.ndarray,
    surfaces: Sequence[_Surface],
    points: np.ndarray,
    normals: np.ndarray,
    room: _Room,
) -> np.ndarray:
    """Textured albedo times Lambert shading from a ceiling light, plus sensor noise."""
    albedo = np.empty(points.shape)
    for index in np.unique(surface_map):
        mask = surface_map == index
        material = surfaces[index].material
        albedo[mask] = material.colour * _texture(material, points[mask])[:, None]
    centre_x = (room.left + room.right) / 2
    light = np.array([centre_x + rng.uniform(-1.0, 1.0), room.ceiling + 0.3, rng.uniform(1.5, 3.5)])
    to_light = light - points
    distance = np.linalg.norm(to_light, axis=-1, keepdims=True)
    lambert = np.clip(np.einsum("hwc,hwc->hw", normals, to_light / distance), 0.0, None)
    shading = _LIGHT_AMBIENT + lambert * (12.0 / (8.0 + distance[..., 0] ** 2))
    image = albedo * shading[..., None] + rng.normal(0.0, 0.015, size=albedo.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _degrade(
    rng: np.random.Generator, label: np.ndarray, depth: np.ndarray, normals: np.ndarray, roles: ClassRoles
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Void labels and depth holes where real annotations and Kinect sensors have them."""
    shape = label.shape
    max_blob = max(2.0, min(shape) / 8)
    void = _border(shape, int(rng.integers(1, 4))) | _ellipses(shape, int(rng.integers(0, 2)), max_blob, rng)
    void |= _label_boundaries(label) & (rng.random(shape) < 0.3)
    invalid = _border(shape, int(rng.integers(1, 5))) | _ellipses(shape, int(rng.integers(1, 4)), max_blob, rng)
    invalid |= np.isin(label, list(roles.no_depth))
    label = np.where(void, VOID, label).astype(np.int16)
    depth = np.where(invalid, 0.0, depth).astype(np.float32)
    normals = np.where(invalid[..., None], 0.0, normals)
    return label, depth, normals


def _scenes(num_images: int, height: int, width: int, seed: int, roles: ClassRoles) -> Iterator[tuple[int, Scene]]:
    """Scene i depends only on (seed, i): a larger dataset extends a smaller one."""
    for index in range(num_images):
        yield index, render_scene(np.random.default_rng([seed, index]), height=height, width=width, roles=roles)


def _split_counts(num_images: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    num_val = max(1, round(num_images * val_fraction))
    num_test = max(1, round(num_images * test_fraction)) if test_fraction > 0 else 0
    return num_images - num_val - num_test, num_val, num_test


def _fraction_problem(val_fraction: float, test_fraction: float) -> tuple[str, str] | None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            return name, f"{value} is out of range; expected a fraction in [0, 1)"
    if val_fraction + test_fraction >= 1:
        return "test_fraction", f"{test_fraction} leaves no train images (val fraction {val_fraction}); expected a sum below 1"
    return None


def min_images(*, val_fraction: float = 0.2, test_fraction: float = 0.0, min_train: int = 1) -> int:
    """The fewest images whose split has ``min_train`` train images and one of val (and of test)."""
    problem = _fraction_problem(val_fraction, test_fraction)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    num_images = min_train + 1
    while _split_counts(num_images, val_fraction, test_fraction)[0] < min_train:
        num_images += 1
    return num_images


def check_settings(
    *, num_images: int, height: int, width: int, seed: int,
    val_fraction: float = 0.2, test_fraction: float = 0.0, min_train: int = 1,
) -> tuple[str, str] | None:
    """The first setting the generator cannot use, as ``(name, "<value> ...; expected ...")``, or None.

    Asked before anything is written, so bad settings leave no folder behind; the command line
    and the config's ``synthetic`` block name the setting their own way (flag, config key)."""
    problem = _fraction_problem(val_fraction, test_fraction)
    if problem is not None:
        return problem
    fewest = min_images(val_fraction=val_fraction, test_fraction=test_fraction, min_train=min_train)
    if num_images < fewest:
        test = ", 1 test" if test_fraction > 0 else ""
        return "num_images", f"{num_images} is too few; expected at least {fewest} ({min_train} train, 1 val{test})"
    for name, side in (("height", height), ("width", width)):
        if not 1 <= side <= MAX_IMAGE_SIDE:
            return name, f"{side} is out of range; expected 1 to {MAX_IMAGE_SIDE} pixels"
    if seed < 0:
        return "seed", f"{seed} is negative; expected a non-negative integer (numpy seeds)"
    return None


def _check(**settings: int | float) -> None:
    """ValueError naming the first unusable setting (the library's callers pass their arguments)."""
    problem = check_settings(**settings)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")


def _split_names(num_images: int, val_fraction: float, test_fraction: float) -> list[str]:
    """The split of each image, in order: train first, then val, then test."""
    num_train, num_val, num_test = _split_counts(num_images, val_fraction, test_fraction)
    return ["train"] * num_train + ["val"] * num_val + ["test"] * num_test


def make_nyud(
    root: str | Path,
    *,
    num_images: int = 600,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    num_classes: int = 40,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
) -> Path:
    """Write a NYUD_MT-layout dataset into `root` (files are overwritten); returns `root`.

    Layout: images/<id>.jpg, segmentation/<id>.png (0 = void, 1..K), depth/<id>.npy,
    normals/<id>.npy, edge/<id>.npy and gt_sets/{train,val}.txt (test.txt when
    `test_fraction` > 0), like the study's release of NYU-v2.
    """
    _check(num_images=num_images, height=height, width=width, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    root, roles = Path(root), class_roles(num_classes)
    splits = _split_names(num_images, val_fraction, test_fraction)
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {name: [] for name in dict.fromkeys(splits)}
    for index, scene in _scenes(num_images, height, width, seed, roles):
        sample_id = f"{index:04d}"
        ids[splits[index]].append(sample_id)
        cv2.imwrite(str(root / "images" / f"{sample_id}.jpg"), scene.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "segmentation" / f"{sample_id}.png"), (scene.label + 1).astype(np.uint8))
        np.save(root / "depth" / f"{sample_id}.npy", scene.depth)
        np.save(root / "normals" / f"{sample_id}.npy", scene.normals)
        np.save(root / "edge" / f"{sample_id}.npy", scene.edge)
    for name, names in ids.items():
        (root / "gt_sets" / f"{name}.txt").write_text("".join(f"{i}\n" for i in names), encoding="utf-8")
    log.info("wrote %d synthetic NYUD_MT images of %dx%d to %s", num_images, height, width, root)
    return root


def make_mtan(
    root: str | Path,
    *,
    num_images: int = 600,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    num_classes: int = 13,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
) -> Path:
    """Write an MTAN-layout dataset into `root` (files are overwritten); returns `root`.

    Layout: {train,val[,test]}/{image,label,depth,normal}/<i>.npy with i = 0..n-1 per split;
    image float32 H x W x 3 in [0, 1], label float32 (-1 = ignore), depth H x W x 1.
    """
    _check(num_images=num_images, height=height, width=width, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    root, roles = Path(root), class_roles(num_classes)
    splits = _split_names(num_images, val_fraction, test_fraction)
    counts = dict.fromkeys(splits, 0)
    for split in counts:
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
    for index, scene in _scenes(num_images, height, width, seed, roles):
        split = splits[index]
        name, counts[split] = f"{counts[split]}.npy", counts[split] + 1
        np.save(root / split / "image" / name, scene.image.astype(np.float32) / 255.0)
        np.save(root / split / "label" / name, scene.label.astype(np.float32))
        np.save(root / split / "depth" / name, scene.depth[..., None])
        np.save(root / split / "normal" / name, scene.normals)
    log.info("wrote %d synthetic MTAN images of %dx%d to %s", num_images, height, width, root)
    return root


_MAKERS: dict[str, Callable[..., Path]] = {"nyud": make_nyud, "mtan": make_mtan}
#: The stamp a generator leaves in its folder (JSON: its settings). A folder holding it may be written
#: over; any other non-empty folder is refused, so ``--out`` can never overwrite real data.
SYNTHETIC_MARKER = ".synthetic.json"


def out_problem(path: Path) -> str | None:
    """Why a generator's ``--out`` cannot take its output: not writable, or someone else's non-empty folder."""
    return folder_problem(path) or foreign_folder_problem(path, (SYNTHETIC_MARKER,))


def stamp(root: Path, settings: dict[str, object]) -> None:
    """Mark ``root`` as a generator's output (written last: a folder without it is not finished)."""
    write_json(root / SYNTHETIC_MARKER, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: generate a dataset folder."""
    parser = cli.ArgumentParser(prog="python -m data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=cli.path_arg, required=True, help="dataset folder to write (new, empty, or an earlier one)")
    parser.add_argument("--layout", choices=sorted(_MAKERS), default="nyud")
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.0, help="also write a test split")
    args = parser.parse_args(argv)
    problem = check_settings(
        num_images=args.num_images, height=args.height, width=args.width, seed=args.seed, test_fraction=args.test_fraction,
    )
    if problem is not None:  # argparse's exit code 2 and one line, before anything is written
        parser.error(f"--{problem[0].replace('_', '-')} {problem[1]}")
    problem = out_problem(args.out)
    if problem is not None:
        parser.error(f"--out '{args.out}': {problem}; expected a folder to write the dataset into")

    def body() -> None:
        settings = dict(num_images=args.num_images, height=args.height, width=args.width, seed=args.seed,
                        test_fraction=args.test_fraction)
        stamp(_MAKERS[args.layout](args.out, **settings), {"layout": args.layout, **settings})

    return cli.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
