#!/usr/bin/env bash
# Decode a trained model, like the original scripts/run_decode.sh (full-step ancestral sampling).
#
#   bash scripts/run_decode.sh diffusion_models/<run> [extra run_decode.py flags]
#
# Environment (all optional):
#   MODEL_DIR    run folder (glob allowed) if not given as the first argument
#   SEEDS        seeds decoded one run after another (default "123", as the original script)
#   NUM_SAMPLES  K > 0: one run that samples K candidates with seeds SEED..SEED+K-1 instead of
#                looping over SEEDS (same files, one model load; for MBR use 10)
#   SEED         first seed with NUM_SAMPLES (default 101)
#   SPLIT        train | valid | test (default test)
#   BSZ          sequences per model call (default 50)
#   STEP         sampling steps (default: the model's T = full ancestral sampling)
#   NPROC        processes; > 1 launches torchrun (one per GPU; CPU processes use gloo)
#   PYTHON       interpreter (default python3)
# Outputs: generation_outputs/<run>/<ckpt>.samples/seed<S>_step0.json (see python run_decode.py --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
MODEL_DIR="${1:-${MODEL_DIR:-}}"
if [ -z "$MODEL_DIR" ]; then
    echo "usage: bash scripts/run_decode.sh diffusion_models/<run folder> [run_decode.py flags]" >&2
    exit 2
fi
[ "$#" -gt 0 ] && shift
NPROC="${NPROC:-1}"
if [ "$NPROC" -gt 1 ]; then
    launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" run_decode.py)
else
    launch=("$PYTHON" -u run_decode.py)
fi
common=(--model_dir "$MODEL_DIR" --split "${SPLIT:-test}" --bsz "${BSZ:-50}")
[ -n "${STEP:-}" ] && common+=(--step "$STEP")
if [ "${NUM_SAMPLES:-0}" -gt 0 ]; then
    "${launch[@]}" "${common[@]}" --seed "${SEED:-101}" --num_samples "$NUM_SAMPLES" "$@"
else
    for seed in ${SEEDS:-123}; do
        "${launch[@]}" "${common[@]}" --seed "$seed" "$@"
    done
fi
