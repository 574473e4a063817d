#!/usr/bin/env bash
# Train DiffuSeq with the paper's QQP recipe (configs/qqp.yaml) on one machine with torchrun.
#
#   bash scripts/train.sh                                   # 4 processes (GPUs), datasets/QQP
#   NPROC=2 DATA_DIR=/data/QQP bash scripts/train.sh --learning_steps 1000
#   CONFIG=configs/qg.yaml DATA_DIR=/data/QG bash scripts/train.sh
#
# Environment: NPROC (processes, default 4; one per GPU, or CPU processes with gloo),
# DATA_DIR (default <repo>/datasets/QQP), CONFIG (default <repo>/configs/qqp.yaml),
# TORCHRUN (default: torchrun, else `python3 -m torch.distributed.run`).
# Extra arguments are passed to run_train.py and override the preset. `--bsz` is per process.
# Works from any directory: the run folder goes to ./diffusion_models/ of the current directory
# (or --checkpoint_path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${TORCHRUN:-}" ]]; then
    if command -v torchrun >/dev/null 2>&1; then
        TORCHRUN=torchrun
    else
        TORCHRUN="${PYTHON:-python3} -m torch.distributed.run"
    fi
fi

# shellcheck disable=SC2086  # TORCHRUN may be a command with arguments
exec $TORCHRUN --standalone --nproc_per_node="${NPROC:-4}" "$ROOT/run_train.py" \
    --config "${CONFIG:-$ROOT/configs/qqp.yaml}" \
    --data_dir "${DATA_DIR:-$ROOT/datasets/QQP}" \
    "$@"
