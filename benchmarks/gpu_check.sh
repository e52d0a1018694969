#!/usr/bin/env bash
# The GPU path, checked and measured in one run (under 8 minutes on one H100/H200): what a
# session with an accelerator runs once, reporting the card with each figure.
#   bash benchmarks/gpu_check.sh            (from the repository root, after `make install`)
# 1. every CUDA test (pytest -m cuda), 2. the training step with bf16 autocast + channels-last,
# eager and compiled, against the study's per-task-backbone forward, 3. the optimizer step on
# CUDA, 4. compact against sparse models on the GPU (bench_compact --quick), 5. a 2-process NCCL
# run of a tiny trial when there are 2 GPUs or more.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
status=0
run() {  # a titled step; its failure is reported, the next steps still run
    echo; echo "== $1"; shift
    if ! timeout 300 "$@"; then echo "FAILED: $*"; status=1; fi
}
"$PY" - <<'PYEOF' || { echo "no CUDA device: nothing to check"; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"card: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s), torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
run "CUDA tests" "$PY" -m pytest -q -m cuda tests
run "training step, bf16 + channels-last, eager" "$PY" -m benchmarks.bench_train_step --device cuda --amp --channels-last --steps 20
run "training step, bf16 + channels-last, torch.compile" "$PY" -m benchmarks.bench_train_step --device cuda --amp --channels-last --compile --steps 20
run "optimizer step on CUDA" "$PY" -m benchmarks.bench_optimizer --device cuda --steps 20
run "compact vs sparse model, CPU and GPU (quick)" "$PY" -m benchmarks.bench_compact --quick --cuda
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    run "2-process NCCL trial" "$PY" -m pytest -q tests/engine/test_distributed.py -k two_processes
else
    echo; echo "== 2-process NCCL trial: skipped (one GPU; NCCL needs one device per process)"
fi
exit $status
