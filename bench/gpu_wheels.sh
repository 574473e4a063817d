#!/usr/bin/env bash
# Wheels that bench/gpu_check.sh needs on a lent GPU machine whose image lacks them (it has
# torch, transformers, numpy, safetensors, huggingface_hub, PyYAML, tqdm, but no diffusers, which
# the DPM-Solver++ decode imports, nor its importlib_metadata). Run here, once, from the
# repository root; the device command then carries .whl (see bench/RESULTS.md, "GPU"):
#
#   bash bench/gpu_wheels.sh
#   device run, carry [".whl"]:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#     PYTHONUNBUFFERED=1 bash bench/gpu_check.sh --out "$OUT/results_gpu.md" 2>&1 | tee "$OUT/gpu_check.log"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: -d .whl \
    "diffusers==${DIFFUSERS_VERSION:-0.42.1}" "importlib_metadata==${IMPORTLIB_METADATA_VERSION:-10.2.0}"
ls -l .whl
