#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with .gpu/ prepared by
# scripts/gpu_bundle.sh. Installs the carried wheels, runs the gpu-marked tests
# and the GPU benchmark. Writes results to ${OUT:-gpu-results}/.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest tests/test_gpu.py -m gpu -o addopts="" -p no:cacheprovider \
    -v --durations=0 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 300 python3 benchmarks/gpu_minilm.py --model .gpu/minilm --docs "${DOCS:-100000}" \
    --out "$OUT/gpu-bench.json" 2>&1 | tail -40
exit "$tests"
