#!/usr/bin/env bash
# Decode a trained model, like the original scripts/run_decode.sh (full-step ancestral sampling).
#
#   bash scripts/run_decode.sh diffusion_models/<run> [run_decode.py flags]
#   MODEL_DIR=diffusion_models/<run> bash scripts/run_decode.sh --sampler dpm-solver++ --step 10
#
# The first argument is the run folder unless it starts with `-`; every other argument goes to
# run_decode.py unchanged (and wins over the defaults below).
# Environment (all optional):
#   MODEL_DIR    run folder (glob allowed) if not given as the first argument
#   SEEDS        seeds decoded one run after another (default "123", as the original script)
#   NUM_SAMPLES  K > 0: one run that samples K candidates with seeds SEED..SEED+K-1 instead of
#                looping over SEEDS (same files, one model load; for MBR use 10)
#   SEED         first seed with NUM_SAMPLES (default 101)
#   SPLIT        train | valid | test (default test)
#   BSZ          sequences per model call (default 50)
#   STEP         sampling steps (default: the model's T = full ancestral sampling)
#   NPROC, NNODES, ...  processes (default: one per visible GPU, else 1) and nodes, as in
#                scripts/train.sh (scripts/common.sh); CPU processes use gloo
#   PYTHON       interpreter (default python3)
# Outputs: generation_outputs/<run>/<ckpt>.samples/seed<S>_step0.json (see python run_decode.py --help).
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
    echo "usage: bash scripts/run_decode.sh diffusion_models/<run folder> [run_decode.py flags]" >&2
    echo "   or: MODEL_DIR=diffusion_models/<run folder> bash scripts/run_decode.sh [run_decode.py flags]" >&2
    exit 2
fi
torch_launch run_decode.py
if [[ -z "${STEP:-}" ]] && ! has_flag --step "$@" && ! has_flag --sampler "$@" \
    && ! has_flag --device "$@" && [[ "$(visible_gpus)" == 0 ]]; then
    echo "run_decode.sh: full-step ancestral sampling on CPU: one model call per diffusion step" \
        "(T=2000 for the paper's models) for every batch of ${BSZ:-50}, which takes long" \
        "(after a few seconds the sampler's steps show their rate and the batch's time left). 200x fewer model calls at" \
        "nearly the same quality: add --sampler dpm-solver++ --step 10 (scripts/run_decode_solver.sh)." >&2
fi
common=(--model_dir "$MODEL_DIR" --split "${SPLIT:-test}" --bsz "${BSZ:-50}")
[[ -n "${STEP:-}" ]] && common+=(--step "$STEP")
if [[ "${NUM_SAMPLES:-0}" -gt 0 ]]; then
    "${LAUNCH[@]}" "${common[@]}" --seed "${SEED:-101}" --num_samples "$NUM_SAMPLES" "$@"
else
    for seed in ${SEEDS:-123}; do
        "${LAUNCH[@]}" "${common[@]}" --seed "$seed" "$@"
    done
fi
