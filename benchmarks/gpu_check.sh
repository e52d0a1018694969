#!/usr/bin/env bash
# The GPU path, checked and measured in one run (under 8 minutes on one H100/H200): what a
# session with an accelerator runs once, reporting the card with each figure.
#   bash benchmarks/gpu_check.sh            (from anywhere; the repository's .venv when it has
#                                            one, else python3; PY=... picks another interpreter)
# 1. every CUDA test (pytest -m cuda over the files that hold them), 2. the training step with
# bf16 autocast + channels-last, eager and compiled, against the study's per-task-backbone
# forward, 3. the optimizer step on CUDA, 4. compact against sparse models on the GPU
# (bench_compact --quick), 5. a 2-process NCCL run of a tiny trial when there are 2 GPUs or more.
# Each step's output goes to the console and to $GPU_CHECK_LOG (default gpu_check.log); the
# summary at the end lists every step with its status and seconds. Exit code 0 when all passed,
# 1 when a step failed, 2 without a CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
LOG=${GPU_CHECK_LOG:-gpu_check.log}
: >"$LOG"
status=0
summary=()
run() {  # a titled step; its failure is reported, the next steps still run
    local title=$1 started=$SECONDS result=passed
    shift
    echo; echo "== $title" | tee -a "$LOG"
    if ! timeout 300 "$@" 2>&1 | tee -a "$LOG"; then result=FAILED; status=1; fi
    summary+=("$(printf '| %-52s | %-6s | %4d s |' "$title" "$result" $((SECONDS - started)))")
}
"$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device: nothing to check")
print(f"card: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s), "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")
PYEOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2
mapfile -t cuda_tests < <(grep -rlE "mark\.cuda|pytest\.mark\.cuda" tests --include='*.py')
run "CUDA tests (${#cuda_tests[@]} files)" "$PY" -m pytest -q -p no:cacheprovider -m cuda "${cuda_tests[@]}"
run "training step, bf16 + channels-last, eager" "$PY" -m benchmarks.bench_train_step --device cuda --amp --channels-last --steps 20
run "training step, bf16 + channels-last, torch.compile" "$PY" -m benchmarks.bench_train_step --device cuda --amp --channels-last --compile --steps 20
run "optimizer step on CUDA" "$PY" -m benchmarks.bench_optimizer --device cuda --steps 20
run "compact vs sparse model, CPU and GPU (quick)" "$PY" -m benchmarks.bench_compact --quick --cuda
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    run "2-process NCCL trial" "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_distributed.py -k two_processes
else
    summary+=("$(printf '| %-52s | %-6s | %4s   |' "2-process NCCL trial" "skip" "-")")
fi
{
    echo; echo "== summary"
    printf '| %-52s | %-6s | %6s |\n' step status time
    printf '%s\n' "${summary[@]}"
} | tee -a "$LOG"
exit $status
