#!/usr/bin/env bash
# The main job on the bundled demo dataset, on CPU and offline:
#   train (configs/demo.yaml) -> decode the test split (5 candidates per source, 10 DPM-Solver++
#   steps, one batched pass) -> evaluate (per-seed metrics, diversity, MBR).
# Re-running resumes or reuses the finished run (--resume_checkpoint auto). The decode goes to
# the demo's own folder DEMO_OUT, created afresh on every run (only a folder an earlier demo.sh
# created is removed; any other folder there is refused), so the evaluation sees this decode's
# 5 candidates and nothing else.
#
# Environment (optional): RUN (run folder, default diffusion_models/demo), DEMO_OUT (decode
# outputs, default generation_outputs/demo_script), OMP_NUM_THREADS
# (default: one per idle core), PYTHON, and any extra
# run_train.py flags as arguments, e.g. `bash scripts/demo.sh --learning_steps 500`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch, transformers, diffusers, nltk, torchmetrics, yaml" 2>/dev/null; then
    bash scripts/install.sh
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One torch thread per idle core (an explicit OMP_NUM_THREADS wins): on a quiet 2-core machine
# two threads are 1.6x faster per step than one for this small model (bench/data/train_demo.md:
# 0.069 vs 0.109 s/step), but on cores busy with other jobs a 2-thread step was 30x slower
# (4 s vs 0.13 s), so never more threads than idle cores.
# shellcheck source=scripts/common.sh
source scripts/common.sh
set_threads demo.sh
RUN="${RUN:-diffusion_models/demo}"
DEMO_OUT="${DEMO_OUT:-generation_outputs/demo_script}"
STEPS=10
SAMPLES=5

fresh_folder "$DEMO_OUT" demo.sh || exit 2  # before training: a refusal comes at once
start=$(date +%s)
"$PYTHON" run_train.py --config configs/demo.yaml --checkpoint_path "$RUN" --resume_checkpoint auto "$@"
trained=$(date +%s)

ckpt="$(ls "$RUN"/ema_*.pt | sort | tail -n 1)"
"$PYTHON" run_decode.py --model_dir "$RUN" --split test --sampler dpm-solver++ --step "$STEPS" \
    --num_samples "$SAMPLES" --seed 101 --bsz 500 --out_dir "$DEMO_OUT"
decoded=$(date +%s)

out="$DEMO_OUT/$(basename "$RUN")/$(basename "$ckpt").samples-dpm-solver++-${STEPS}steps"
"$PYTHON" eval_seq2seq.py --folder "$out" --mbr --summary --no_bertscore
end=$(date +%s)
echo "demo: train $((trained - start)) s, decode $((decoded - trained)) s, evaluate $((end - decoded)) s; outputs in $out"
