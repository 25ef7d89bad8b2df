#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with .gpu/ prepared by
# scripts/gpu_bundle.sh (`make gpu-bundle`). Installs the carried wheels, runs
# the gpu-marked tests, then the GPU benchmark (benchmarks/gpu.py: GPU L0, the
# encode loop, run_job cold and warm on the mixed cluster, a BERT-base-sized
# encoder, the model load step by step). Under 8 minutes on one H200.
# Writes ${OUT:-gpu-results}/: gpu.txt, gpu-tests.log, gpu-bench.{json,md}
# (copy the last two to benchmarks/results/gpu-<machine>-<date>.{json,md}).
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers, sentence_transformers as s; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", s.__version__)' | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest tests/test_gpu.py -m gpu -o addopts="" -p no:cacheprovider \
    -v --durations=0 2>&1 | tee "$OUT/gpu-tests.log" | tail -15
tests=${PIPESTATUS[0]}
timeout 330 python3 -m benchmarks.gpu --model .gpu/minilm --docs "${DOCS:-200000}" \
    --bert-docs "${BERT_DOCS:-50000}" --configs "${CONFIGS:-2x1,4x1,2x2}" --device "${DEVICE:-cuda}" \
    --out-dir "$OUT" 2>&1 \
    | grep -v 'it/s\]' | tail -40
cat "$OUT/gpu-bench.md" 2>/dev/null
echo "gpu-check: $(( $(date +%s) - start )) s"
exit "$tests"
