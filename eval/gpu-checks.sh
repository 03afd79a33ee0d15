#!/usr/bin/env bash
# The GPU checks of issue 16 in one call (an H200-class machine with torch + CUDA; diffusers and clean-fid carried as
# wheels): the CUDA tests, then the speed table in bf16 at batch 8 within a time budget. Outputs under ${OUT:-.}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results}"
mkdir -p "$out"
python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_attention.py tests/test_diffusion.py \
    2>&1 | tee "$out/pytest-cuda.txt" | tail -20
python -m flexgen bench suite --device cuda --dtype bfloat16 --batch 8 --time-budget "${BUDGET:-420}" \
    --out "$out/bench-suite-cuda-bfloat16"
