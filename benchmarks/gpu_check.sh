#!/usr/bin/env bash
# The prepared GPU check (one run on a machine with CUDA, about 10 minutes): the CUDA tests, a distributed
# extraction on every GPU, and the benchmark suite on CUDA in bfloat16 and float32. Writes its outputs under
# ${OUT:-runs/gpu-check}; the tables go to benchmarks/README-cuda-<dtype>.md and results-cuda-<dtype>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/activations/test_distributed.py -q -p no:cacheprovider -k "cuda" 2>&1 | tee "$OUT/tests.txt"
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
torchrun --nproc-per-node "$NGPU" -m workbench.cli extract --data synthsocial:train --n-items 4096 \
    --sites head_contributions,blocks.5.hook_resid_post --cache-dir "$OUT/acts" --device cuda --overwrite --quiet \
    2>&1 | tee "$OUT/extract.txt"
python3 -m benchmarks --device cuda --dtype bfloat16 --out benchmarks 2>&1 | tee "$OUT/bench-bf16.txt"
python3 -m benchmarks --device cuda --dtype float32 --only hooked_vs_native,head_contributions,probe --out "$OUT" \
    2>&1 | tee "$OUT/bench-fp32.txt"
