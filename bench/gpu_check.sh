#!/usr/bin/env bash
# The one-call device check of issue 26 (bench/gpu_check.py): device, SDPA kernels, loss parity
# against the CPU, paper-config training steps (fp32 / TF32 / bf16 / fp16, eager and compiled),
# a QQP-sized K-candidate decode and a one-GPU torchrun (NCCL) run, in at most --budget seconds
# (default 480), written as a markdown table (default bench/results_gpu.md).
#
#   bash bench/gpu_check.sh                               # on a CUDA machine
#   bash bench/gpu_check.sh --out "$OUT/results_gpu.md"   # on a lent machine ($OUT comes back)
#   bash bench/gpu_check.sh --cpu_smoke                   # tiny sizes on the CPU (~1 minute)
#   bash bench/gpu_check.sh --help                        # every flag
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
