"""The benchmarks that ``benchmarks/gpu_check.sh`` runs on CUDA run end to end on the CPU (smoke runs, no timing asserted)."""

from __future__ import annotations

import re

import pytest

from benchmarks import bench_optimizer, bench_train_step

pytestmark = pytest.mark.slow


def test_the_train_step_benchmark_prints_its_table(capsys: pytest.CaptureFixture[str], one_thread) -> None:
    assert bench_train_step.main(["--device", "cpu", "--steps", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "| backbone once (this project) |" in out and "| backbone per task (the study) |" in out
    assert float(re.search(r"speed-up of one backbone pass per step: ([0-9.]+)x ", out).group(1)) > 0


def test_the_optimizer_benchmark_prints_its_table(capsys: pytest.CaptureFixture[str], one_thread) -> None:
    assert bench_optimizer.main(["--device", "cpu", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for row in ("torch AdamW (fused)", "ProxAdam l1/l2 weighted", "ProxAdam MCP weighted"):
        assert row in out
