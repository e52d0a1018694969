"""Figures: the plot script on a trained trial (PNG files, wandb offline run) and the plot functions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import plot_sparsity_wandb
from utils import plots


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_plot_script_writes_pngs_and_logs_them_offline(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = trained.folder(0)
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(folder), "--wandb_dir", str(tmp_path)]) == 0
    for name in ("sparsity_plot.png", "training_curves.png"):
        width, height = png_size(folder / name)
        assert 600 <= width <= 2400 and height > 200, name
    logged = list(tmp_path.glob("wandb/offline-run-*/files/media/images/*.png"))
    assert {p.name.split("_")[0] for p in logged} >= {"sparsity", "training"}


def test_plot_script_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(tmp_path / "nope"), "--wandb", "disabled"]) == 2
    assert "nope" in capsys.readouterr().err


def copied_trial(trained, tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / trained.folder(0).name
    shutil.copytree(trained.folder(0), folder, ignore=shutil.ignore_patterns("*.png"))
    return folder


@pytest.mark.parametrize(("file", "key", "value", "expected"), [
    ("validation_dict.json", "metric.segmentsemantic.mIoU", 5, "a list of numbers"),
    ("training_dict.json", "target_group_sparsity", 5, "a list of numbers"),
    ("training_dict.json", "sparsity", [1, 2], "a JSON object"),
    ("training_dict.json", "lambda", ["x"], "a list of numbers"),
])
def test_a_history_value_of_the_wrong_type_is_one_line_and_no_png(trained, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  file: str, key: str, value: object, expected: str) -> None:
    folder = copied_trial(trained, tmp_path)
    history = json.loads((folder / file).read_text())
    *parents, last = key.split(".")
    node = history
    for part in parents:
        node = node[part]
    node[last] = value
    (folder / file).write_text(json.dumps(history))
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(folder), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("error: ")
    assert file in err[-1] and f"'{key}'" in err[-1] and expected in err[-1]
    assert not list(folder.glob("*.png"))


def test_a_wandb_dir_that_is_a_file_is_refused_before_any_png(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = copied_trial(trained, tmp_path)
    (tmp_path / "wf").write_text("")
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(folder), "--wandb_dir", str(tmp_path / "wf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and "--wandb_dir" in err[-1] and str(tmp_path / "wf") in err[-1]
    assert not list(folder.glob("*.png"))


def test_a_folder_in_place_of_a_figure_is_refused_before_any_png(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copied_trial(trained, tmp_path)
    (folder / "training_curves.png").mkdir()
    assert plot_sparsity_wandb.main(["--exp_folder_path", str(folder), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: figure '{folder / 'training_curves.png'}' cannot be written: it is a folder; "
                       "expected a place for a PNG file")
    assert not (folder / "sparsity_plot.png").exists()


def test_survival_map_marks_alive_zero_and_absent() -> None:
    layers = [plots.LayerChannels("a", np.array([True, False])), plots.LayerChannels("b", np.array([False, True, True]))]
    image = plots.survival_map(layers)
    assert image.shape == (2, 3, 3)
    assert tuple(image[0, 0]) == plots.ALIVE and tuple(image[0, 1]) == plots.ZERO and tuple(image[0, 2]) == plots.ABSENT
    assert tuple(image[1, 0]) == plots.ZERO


def test_a_resnet50_sized_figure_stays_within_2400_px(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    layers = [plots.LayerChannels(f"layer{i // 14 + 1}.{i % 14}.conv", rng.random(64 * 2 ** (i // 14)) > 0.7) for i in range(55)]
    panels = [plots.SparsityPanel(f"checkpoint {k}", layers) for k in range(2)]
    path = plots.save_png(plots.sparsity_figure(panels, title="resnetd50"), tmp_path / "big.png")
    assert png_size(path)[0] <= 2400


def test_sweep_figure_draws_the_dense_reference(tmp_path: Path) -> None:
    table = pd.DataFrame({
        "lambda": [0.0, 1e-4, 1e-3], "group_sparsity_mean": [0.0, 0.3, 0.7], "group_sparsity_std": [0.0, 0.05, 0.02],
        "seg_mIoU_mean": [0.40, 0.41, 0.35], "seg_mIoU_std": [0.01, 0.02, 0.01],
    })
    figure = plots.sweep_figure(table, {"seg": "mIoU"}, title="sweep")
    axis = figure.axes[0]
    assert [line.get_ydata()[0] for line in axis.lines if line.get_linestyle() == "--"] == [0.40]
    assert png_size(plots.save_png(figure, tmp_path / "sweep.png"))[0] <= 2400


def test_study_figure_draws_a_line_per_setup_and_family_with_the_dense_reference(tmp_path: Path) -> None:
    nan = float("nan")
    table = pd.DataFrame({
        "setup": ["single_a", "single_a", "multi", "multi", "multi", "multi"],
        "family": ["lambda", "lambda", "lambda", "lambda", "target", "fine-tuned"],
        "group_sparsity_mean": [0.0, 0.5, 0.0, 0.6, 0.7, 0.7], "group_sparsity_std": [0.0, 0.1, 0.0, 0.05, 0.01, 0.01],
        "a_acc_mean": [0.40, 0.38, 0.42, 0.41, 0.39, 0.40], "a_acc_std": [0.01] * 6,
        "delta_m_mean": [0.0, -5.0, 5.0, 2.0, -2.0, nan], "delta_m_std": [1.0] * 6,  # NaN: a point left out
    })
    figure = plots.study_figure(table, {"Δm (%)": "delta_m", "a: acc": "a_acc"}, x="group_sparsity", x_scale=100.0,
                                x_label="group sparsity (%)", references={"delta_m": 0.0, "a_acc": 0.40},
                                labels={"single_a": "single-task a", "multi": "multitask"}, title="study")
    gain, metric = figure.axes[:2]
    assert len(gain.containers) == 3 and len(metric.containers) == 4  # the fine-tuned Δm is NaN: no line
    references = [line for line in metric.lines if line.get_label().startswith("single-task dense")]
    assert len(references) == 1 and list(references[0].get_ydata()) == [0.40, 0.40]
    first = metric.containers[0].lines[0]
    assert list(first.get_xdata()) == [0.0, 50.0] and list(first.get_ydata()) == [0.40, 0.38]
    labels = metric.get_legend_handles_labels()[1]
    assert "single-task a (λ grid)" in labels and "multitask (sparsity target)" in labels and "multitask (fine-tuned)" in labels
    width, height = png_size(plots.save_png(figure, tmp_path / "study.png"))
    assert 600 <= width <= 2400 and height > 400
