#!/usr/bin/env bash
# The GPU checks in one call (an H100 / H200 machine with torch + CUDA; no av, decord, clean-fid or xformers;
# diffusers carried as a wheel): the CUDA tests, then the speed table (forward, CFG step, fine-tuning and step-cache
# rows) in bf16 at batch 8 within a time budget. Outputs under ${OUT:-results}: pytest-cuda.txt and
# bench-suite-<device>-<dtype>/suite.{json,md,svg}.
#   eval/gpu-checks.sh                      # BUDGET=420 by default
#   DRY_RUN=1 OUT=/tmp/dry eval/gpu-checks.sh   # the same script on the CPU with a tiny DiT (tests/bench/test_suite.py)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results}"
mkdir -p "$out"
if [ -n "${DRY_RUN:-}" ]; then
    device=cpu dtype=float32 batch=1
    extra=(--models dit-s2-256 --repeats 1 --warmup 0 model.hidden_size=32 model.num_heads=4)
else
    device=cuda dtype=bfloat16 batch=8
    extra=()
fi
python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_attention.py tests/test_diffusion.py \
    2>&1 | tee "$out/pytest-cuda.txt" | tail -20
python -m flexgen bench suite --device "$device" --dtype "$dtype" --batch "$batch" --time-budget "${BUDGET:-420}" \
    --out "$out/bench-suite-$device-$dtype" "${extra[@]}"
