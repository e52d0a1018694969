"""Figures of a trial, a λ sweep and a study: channel survival, training curves, sparsity vs accuracy and Δm.

Functions build :class:`matplotlib.figure.Figure` objects directly (no pyplot state, Agg
canvas), take plain numbers and arrays, and :func:`save_png` writes them atomically. Figures
are at most ``WIDTH_IN * DPI`` = 2250 px wide so they stay legible in wandb and on a page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from utils.checkpoint import atomic_write

DPI = 150
WIDTH_IN = 15.0
#: Survival map colours: channel absent (layer has fewer inputs), zeroed, alive.
ABSENT, ZERO, ALIVE = (1.0, 1.0, 1.0), (0.94, 0.55, 0.35), (0.12, 0.30, 0.55)
#: Most columns of the survival map: about the map's width in pixels.
MAP_COLUMNS = 1024


@dataclass(frozen=True)
class LayerChannels:
    """One backbone conv layer: which of its input-channel groups are non-zero."""

    name: str
    alive: np.ndarray  # bool, one entry per input channel


@dataclass(frozen=True)
class SparsityPanel:
    """One checkpoint's layers and the line of text that describes it."""

    label: str
    layers: Sequence[LayerChannels]


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on its own Agg canvas (pyplot's global figure registry is never touched)."""
    figure = Figure(figsize=(min(width_in, WIDTH_IN), height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` to PNG in memory, then write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return atomic_write(path, lambda stream: stream.write(buffer.getvalue()))


def survival_map(layers: Sequence[LayerChannels]) -> np.ndarray:
    """Layers x channels RGB image: alive, zeroed or absent (beyond the layer's channel count)."""
    width = max(len(layer.alive) for layer in layers)
    image = np.empty((len(layers), width, 3))
    image[:] = ABSENT
    for row, layer in enumerate(layers):
        image[row, : len(layer.alive)] = np.where(layer.alive[:, None], ALIVE, ZERO)
    return image


def fit_columns(image: np.ndarray, columns: int) -> np.ndarray:
    """Average runs of adjacent columns down to at most ``columns``, so no channel drops out of view.

    Drawing 2048 channels into fewer pixels would otherwise pick some and hide the rest; averaged
    colours show the share of zeroed channels honestly.
    """
    if image.shape[1] <= columns:
        return image
    edges = np.linspace(0, image.shape[1], columns + 1).round().astype(int)
    sums = np.add.reduceat(image, edges[:-1], axis=1)
    return sums / np.diff(edges)[None, :, None]


def sparsity_figure(panels: Sequence[SparsityPanel], *, title: str) -> Figure:
    """Per checkpoint, a row: total vs non-zero input-channel groups per layer, and the survival map.

    Both panels of a row share the layer axis (first layer on top), so a bar and the map row
    beside it describe the same layer.
    """
    num_layers = max(len(panel.layers) for panel in panels)
    row_height = 1.2 + 0.16 * num_layers
    figure = new_figure(WIDTH_IN, 0.6 + row_height * len(panels))
    grid = figure.add_gridspec(len(panels), 2, width_ratios=(1, 2.6))
    label_size = 8 if num_layers <= 40 else 6
    for row, panel in enumerate(panels):
        names = [layer.name for layer in panel.layers]
        totals = np.array([len(layer.alive) for layer in panel.layers])
        alive = np.array([int(layer.alive.sum()) for layer in panel.layers])
        positions = np.arange(len(names))

        bars = figure.add_subplot(grid[row, 0])
        bars.barh(positions, totals, color="0.8", label="all groups")
        bars.barh(positions, alive, color=ALIVE, height=0.5, label="non-zero groups")
        bars.set_yticks(positions, names, fontsize=label_size)
        bars.set_ylim(len(names) - 0.5, -0.5)
        bars.set_xlabel("input-channel groups")
        bars.legend(fontsize=8, loc="upper right")  # early layers are narrow: room there
        bars.set_title(panel.label, loc="left", fontsize=10)

        heatmap = figure.add_subplot(grid[row, 1], sharey=bars)
        heatmap.imshow(fit_columns(survival_map(panel.layers), MAP_COLUMNS), aspect="auto", interpolation="nearest",
                       extent=(-0.5, totals.max() - 0.5, len(names) - 0.5, -0.5))
        heatmap.tick_params(axis="y", labelleft=False)
        heatmap.set_xlabel("input channel")
        heatmap.legend(handles=[Patch(color=ALIVE, label="alive"), Patch(color=ZERO, label="zero"),
                                Patch(facecolor=ABSENT, edgecolor="0.6", label="absent")],
                       fontsize=8, loc="upper right", ncols=3)
    figure.suptitle(title, fontsize=12)
    return figure


def training_curves_figure(
    sparsity: Mapping[str, Sequence[float]], metrics: Mapping[str, tuple[str, Sequence[float]]], *, title: str,
    lambdas: Sequence[float] = (), target: float | None = None,
) -> Figure:
    """Sparsity (%) with λ and the target, and each task's primary validation metric, per epoch.

    Args:
        sparsity: ``{measure: values per epoch}``; ratios named ``*_sparsity`` are drawn in %.
        metrics: ``{task: (metric name, values per epoch)}``.
        lambdas: λ per epoch (log scale, right axis of the sparsity panel), when group sparse.
        target: the target group sparsity (``target_group_sparsity``), drawn as a dashed line.
    """
    count = 1 + len(metrics)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure = new_figure(WIDTH_IN, 0.6 + 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    ratios = {name: values for name, values in sparsity.items() if name.endswith("_sparsity")}
    for name, values in ratios.items():
        axes[0].plot(np.arange(len(values)), 100 * np.asarray(values, dtype=float), marker=".", label=name.replace("_", " "))
    axes[0].set(title="backbone sparsity", xlabel="epoch", ylabel="%", ylim=(-2, 102))
    if target is not None:
        axes[0].axhline(100 * target, color="tab:red", linestyle="--", linewidth=1, label=f"target {100 * target:.0f} %")
    if ratios:
        axes[0].legend(fontsize=8, loc="upper left")
    if any(lam > 0 for lam in lambdas):
        right = axes[0].twinx()
        right.plot(np.arange(len(lambdas)), np.asarray(lambdas, dtype=float), color="0.4", linewidth=1, label="λ")
        right.set_yscale("log")
        right.set_ylabel("λ", color="0.4")
        right.legend(fontsize=8, loc="lower right")
    for axis, (task, (metric, values)) in zip(axes[1:], metrics.items()):
        axis.plot(np.arange(len(values)), values, marker=".", color="tab:green")
        axis.set(title=f"{task}: validation {metric}", xlabel="epoch", ylabel=metric)
    for axis in axes[count:]:
        axis.set_visible(False)
    for axis in axes[:count]:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title, fontsize=12)
    return figure


def sweep_figure(table: pd.DataFrame, primary: Mapping[str, str], *, title: str) -> Figure:
    """Each task's primary metric against group sparsity (%) over a sweep, one panel per task, and,
    when the table has ``gflops_compact``, a second row against the compact model's GFLOPs per image.

    ``table`` has a ``lambda`` column and ``<column>_mean`` / ``<column>_std`` columns for
    ``group_sparsity`` and ``<task>_<metric>``; the λ = 0 row, if any, is the dense reference
    drawn as a horizontal line.
    """
    dense = table[table["lambda"] == 0]
    sparse = table[table["lambda"] > 0]
    axes_x = {"group sparsity (%)": ("group_sparsity", 100.0)}
    if "gflops_compact_mean" in table:
        axes_x["compact GFLOPs per image (the real cost)"] = ("gflops_compact", 1.0)
    columns = len(primary)
    figure = new_figure(min(5.0 * columns, WIDTH_IN), 0.8 + 3.8 * len(axes_x))
    grid = figure.subplots(len(axes_x), columns, squeeze=False)
    for row, (label, (x_column, scale)) in enumerate(axes_x.items()):
        x, x_err = scale * sparse[f"{x_column}_mean"], scale * sparse[f"{x_column}_std"]
        for axis, (task, metric) in zip(grid[row], primary.items()):
            column = f"{task}_{metric}"
            axis.errorbar(x, sparse[f"{column}_mean"], xerr=x_err, yerr=sparse[f"{column}_std"],
                          fmt="o-", capsize=3, color="tab:blue", label="group sparse")
            for lam, px, py in zip(sparse["lambda"], x, sparse[f"{column}_mean"]):
                axis.annotate(f"λ={lam:.3g}", (px, py), textcoords="offset points", xytext=(4, 6), fontsize=8)
            if not dense.empty:
                level = float(dense[f"{column}_mean"].iloc[0])
                axis.axhline(level, color="0.3", linestyle="--", label=f"dense (λ=0): {level:.4f}")
            axis.set(title=task, xlabel=label, ylabel=metric)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=12)
    return figure


#: How a study figure draws each level family (``utils.study_report.FAMILIES``): marker and line style.
FAMILY_STYLES: Mapping[str, tuple[str, str]] = {"lambda": ("o", "-"), "target": ("s", ":"), "fine-tuned": ("^", "--")}
#: A study figure's legend name of each family.
FAMILY_NAMES: Mapping[str, str] = {"lambda": "λ grid", "target": "sparsity target", "fine-tuned": "fine-tuned"}


def study_figure(
    table: pd.DataFrame, panels: Mapping[str, str], *, x: str, x_label: str, title: str, x_scale: float = 1.0,
    references: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
) -> Figure:
    """One panel per measured column against ``x``: a line per (setup, level family), error bars over trials.

    Args:
        table: one row per cell with ``setup``, ``family`` (a key of :data:`FAMILY_STYLES`) and
            ``<column>_mean`` / ``<column>_std`` for ``x`` and every panel's column; cells
            without a value (a task the setup does not train) are left out of that panel.
        panels: ``{panel title: column}``.
        x_scale: factor on ``x`` (100 draws a sparsity ratio in %).
        references: ``{column: value}`` drawn as a dashed horizontal line (the single-task dense value).
        labels: legend name of each setup (default: the setup itself).
    """
    references, labels = references or {}, labels or {}
    setups = list(dict.fromkeys(table["setup"]))
    colours = {setup: f"C{index % 10}" for index, setup in enumerate(setups)}
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(6.5 * columns, 0.8 + 4.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (panel, column) in zip(axes, panels.items()):
        for setup in setups:
            for family, (marker, line) in FAMILY_STYLES.items():
                part = table[(table["setup"] == setup) & (table["family"] == family)]
                part = part[part[f"{x}_mean"].notna() & part[f"{column}_mean"].notna()].sort_values(f"{x}_mean")
                if part.empty:
                    continue
                axis.errorbar(x_scale * part[f"{x}_mean"], part[f"{column}_mean"], xerr=x_scale * part[f"{x}_std"],
                              yerr=part[f"{column}_std"], marker=marker, linestyle=line, color=colours[setup], capsize=3,
                              label=f"{labels.get(setup, setup)} ({FAMILY_NAMES[family]})")
        if column in references:
            axis.axhline(references[column], color="0.3", linestyle="--", linewidth=1,
                         label=f"single-task dense: {references[column]:.4g}")
        axis.set(title=panel, xlabel=x_label)
        axis.ticklabel_format(axis="y", useOffset=False)  # close values read as values, not as an offset
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=12)
    return figure
