"""Prediction panels for wandb: a few inputs with each task's ground truth and prediction.

Pure functions from tensors to a uint8 RGB array, so the trainer can log what the model sees
without writing files. Tasks are drawn by kind, known from the study's task names:
segmentation with a fixed palette (void black), depth and edges with a colormap (invalid
black), normals as (n + 1) / 2 RGB, attributes (``class_*``) as text above the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from utils.constants import IMAGENET_MEAN, IMAGENET_STD

CELL_IN = 2.0
DPI = 100


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour palette shifted by one, so class 0 is not black (black is void)."""
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        code, red, green, blue = index + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (code & 1) << shift
            green |= ((code >> 1) & 1) << shift
            blue |= ((code >> 2) & 1) << shift
            code >>= 3
        colors[index] = (red, green, blue)
    return colors


_PALETTE = palette()
_PALETTE.setflags(write=False)


def denormalize(image: Tensor, normalization: str = "none") -> np.ndarray:
    """A model input 3 x H x W (pixels in [0, 1], or ImageNet-normalised) as H x W x 3 floats in [0, 1]."""
    pixels = image.detach().float().cpu()
    if normalization == "imagenet":
        pixels = pixels * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return pixels.clamp(0, 1).permute(1, 2, 0).numpy()


def segmentation_colors(labels: np.ndarray) -> np.ndarray:
    """Class ids H x W -> RGB; ids outside the palette (void 255, negative) are black."""
    labels = np.asarray(labels).astype(np.int64)
    known = (labels >= 0) & (labels < len(_PALETTE) - 1)
    colors = _PALETTE[np.where(known, labels, 0)]
    colors[~known] = 0
    return colors


def scalar_colors(values: np.ndarray, valid: np.ndarray, *, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """A scalar map H x W -> RGB with ``cmap`` over [vmin, vmax]; invalid pixels black."""
    scaled = (np.asarray(values, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    colors = matplotlib.colormaps[cmap](np.clip(scaled, 0, 1))[..., :3]
    colors[~valid] = 0
    return (255 * colors).round().astype(np.uint8)


def normal_colors(normals: np.ndarray) -> np.ndarray:
    """Normals 3 x H x W (any length) -> RGB (n + 1) / 2 of the unit vector; zero vectors black."""
    normals = np.asarray(normals, dtype=np.float64)
    length = np.linalg.norm(normals, axis=0)
    unit = normals / np.maximum(length, 1e-12)
    colors = (unit.transpose(1, 2, 0) + 1) / 2
    colors[length == 0] = 0
    return (255 * colors).round().astype(np.uint8)


def _segmentation(target: Tensor, output: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return segmentation_colors(target.numpy()), segmentation_colors(output.argmax(0).numpy())


def _scalar(cmap: str, *, zero_is_invalid: bool) -> Callable[[Tensor, Tensor], tuple[np.ndarray, np.ndarray]]:
    """Ground truth and prediction on one colour scale: the range of the valid ground truth."""

    def draw(target: Tensor, output: Tensor) -> tuple[np.ndarray, np.ndarray]:
        truth, prediction = target.reshape(target.shape[-2:]).numpy(), output.reshape(output.shape[-2:]).numpy()
        valid = truth > 0 if zero_is_invalid else np.ones_like(truth, dtype=bool)
        values = truth[valid] if valid.any() else prediction.ravel()
        vmin, vmax = float(values.min()), float(values.max())
        everywhere = np.ones_like(prediction, dtype=bool)
        return (scalar_colors(truth, valid, vmin=vmin, vmax=vmax, cmap=cmap),
                scalar_colors(prediction, everywhere, vmin=vmin, vmax=vmax, cmap=cmap))
    return draw


def _normals(target: Tensor, output: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return normal_colors(target.numpy()), normal_colors(output.numpy())


#: Dense task name -> (ground truth, prediction) renderer of one item.
DENSE_RENDERERS: Mapping[str, Callable[[Tensor, Tensor], tuple[np.ndarray, np.ndarray]]] = MappingProxyType({
    "segmentsemantic": _segmentation,
    "depth_euclidean": _scalar("viridis", zero_is_invalid=True),
    "surface_normal": _normals,
    "edge_texture": _scalar("gray", zero_is_invalid=False),
})


def prediction_panel(
    images: Tensor, targets: Mapping[str, Tensor], outputs: Mapping[str, Tensor], task_names: Sequence[str],
    *, max_items: int = 4, image_normalization: str = "none",
) -> np.ndarray:
    """A grid, one row per item: the input, then ground truth and prediction of each dense task.

    ``outputs`` are the tasks' predictions (``Task.predict``). Attribute tasks (``class_*``)
    appear as ``task: gt <0/1>, p <sigmoid>`` lines above the input.

    Returns:
        uint8 array H x W x 3.
    """
    dense = [name for name in task_names if name in DENSE_RENDERERS]
    attributes = [name for name in task_names if name not in DENSE_RENDERERS]
    count = min(max_items, images.shape[0])
    height, width = images.shape[-2:]
    cell_height = CELL_IN * height / width + 0.25 * (1 + len(attributes))
    figure = Figure(figsize=(CELL_IN * (1 + 2 * len(dense)), cell_height * count), dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(count, 1 + 2 * len(dense), squeeze=False)
    cpu = {name: value.detach().float().cpu() for name, value in outputs.items()}
    truth = {name: value.detach().cpu() for name, value in targets.items()}
    for row in range(count):
        lines = [f"{name}: gt {int(truth[name][row])}, p {torch.sigmoid(cpu[name][row].reshape(())).item():.2f}"
                 for name in attributes]
        _show(axes[row, 0], denormalize(images[row], image_normalization), "\n".join(["input", *lines]))
        for column, name in enumerate(dense):
            gt, prediction = DENSE_RENDERERS[name](truth[name][row], cpu[name][row])
            _show(axes[row, 1 + 2 * column], gt, f"{name}\nground truth")
            _show(axes[row, 2 + 2 * column], prediction, f"{name}\nprediction")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _show(axis: Axes, image: np.ndarray, title: str) -> None:
    axis.imshow(image, interpolation="nearest")
    axis.set_title(title, fontsize=8)
    axis.axis("off")
