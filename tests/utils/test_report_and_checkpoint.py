"""Result tables and atomic artefacts."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from utils import checkpoint as ckpt
from utils import report
from utils.errors import DataError


def test_summary_is_mean_and_population_std(tmp_path: Path) -> None:
    rows = [
        report.trial_row({"tasks": {"seg": {"mIoU": 0.2}}, "sparsity": {"group_sparsity": 0.5}}, trial=0),
        report.trial_row({"tasks": {"seg": {"mIoU": 0.4}}, "sparsity": {"group_sparsity": 0.7}}, trial=1),
    ]
    summary_path, trials_path = report.write_tables(rows, out_dir=tmp_path, name="exp")
    summary = pd.read_csv(summary_path)
    assert summary.loc[0, "seg_mIoU"] == "0.3000 ± 0.1000"
    assert summary.loc[0, "group_sparsity"] == "0.6000 ± 0.1000"
    assert pd.read_csv(trials_path)["seg_mIoU"].tolist() == [0.2, 0.4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_round_trip_and_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    ckpt.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert ckpt.load(path)["epoch"] == 3

    def explode(stream) -> None:
        stream.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, explode)
    assert ckpt.load(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_torn_or_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="torn.pt") as error:
        ckpt.load(torn)
    assert "weights_only" not in str(error.value)  # never advice to unpickle a file we cannot vouch for
    with pytest.raises(DataError, match="missing.pt"):
        ckpt.load(tmp_path / "missing.pt")


def test_opening_a_trial_folder_removes_a_killed_writers_temps_and_keeps_the_resume_state(tmp_path: Path) -> None:
    from engine import artifacts
    from tests.tiny import tiny_raw
    from utils import config

    cfg = config.validate(tiny_raw("temps", tmp_path / "runs", tmp_path / "data", checkpoint=True))
    folder = artifacts.trial_folder(cfg, 0)
    folder.mkdir(parents=True)
    ckpt.save({"epoch": 1}, folder / artifacts.LAST_CHECKPOINT)
    stale = folder / ".last.pt.k1lled.tmp"
    stale.write_bytes(b"half a checkpoint")
    artifacts.open_folder(folder, cfg, resume=True)
    assert not stale.exists() and ckpt.load(folder / artifacts.LAST_CHECKPOINT)["epoch"] == 1
    assert config.load(folder / artifacts.CONFIG_FILE) == cfg
    artifacts.open_folder(folder, cfg, resume=False)  # a fresh run clears the old state
    assert not (folder / artifacts.LAST_CHECKPOINT).exists()
    blocked = artifacts.trial_folder(cfg, 1)
    blocked.write_text("a file")
    with pytest.raises(DataError, match="is a file"):
        artifacts.open_folder(blocked, cfg, resume=False)
