#!/usr/bin/env bash
# Decode with 10 DPM-Solver++ steps, like DiffuSeq-v2's scripts/run_decode_solver.sh
# (--seed 110 --bsz 100 --step 10, newest checkpoint only).
#
#   bash scripts/run_decode_solver.sh diffusion_models/<run> [extra run_decode.py flags]
#
# Environment (all optional): MODEL_DIR, SEED (110), NUM_SAMPLES (1), STEP (10), BSZ (100),
# SPLIT (test), NPROC/NNODES (processes and nodes as in scripts/train.sh), PYTHON (python3), and
#   V2_VARIANT=1  use DiffuSeq-v2's modified solver loop (reproduces v2 numbers) instead of
#                 standard DPM-Solver++(2M) with rounding.
# Outputs: generation_outputs/<run>/<ckpt>.samples-dpm-solver++-10steps/seed110_step0.json
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/common.sh
source scripts/common.sh
if [[ $# -gt 0 && "$1" != -* ]]; then
    MODEL_DIR="$1"
    shift
fi
MODEL_DIR="${MODEL_DIR:-}"
if [[ -z "$MODEL_DIR" ]]; then
    echo "usage: bash scripts/run_decode_solver.sh diffusion_models/<run folder> [run_decode.py flags]" >&2
    exit 2
fi
torch_launch run_decode.py
extra=()
[ "${V2_VARIANT:-0}" = "1" ] && extra+=(--dpm_v2_variant)
"${LAUNCH[@]}" --model_dir "$MODEL_DIR" --sampler dpm-solver++ --step "${STEP:-10}" --seed "${SEED:-110}" \
    --num_samples "${NUM_SAMPLES:-1}" --bsz "${BSZ:-100}" --split "${SPLIT:-test}" "${extra[@]}" "$@"
