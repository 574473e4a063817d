#!/usr/bin/env bash
# Train with run_train.py on NPROC processes per node (torchrun; one process: plain python).
#
#   NPROC=1 bash scripts/train.sh --config configs/demo.yaml --learning_steps 500
#   bash scripts/train.sh --checkpoint_path diffusion_models/RUN --resume_checkpoint auto
#   DATA_DIR=/data/QQP bash scripts/train.sh             # the QQP preset (configs/qqp.yaml)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/train.sh --config configs/qqp.yaml
#
# Every argument goes to run_train.py unchanged. Only when the arguments name no --config, no
# --data_dir and no --resume_checkpoint does the script add the paper's QQP preset
# (--config configs/qqp.yaml --data_dir datasets/QQP), and it says so. A resumed run takes its
# configuration from its run folder, so nothing is added then.
#
# Environment (all optional):
#   NPROC      processes per node (default: one per visible GPU, else 1); --bsz is per process
#   CONFIG     preset added before the arguments (default: configs/qqp.yaml as described above)
#   DATA_DIR   data folder added before the arguments (default with the QQP preset: datasets/QQP)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, RDZV_ENDPOINT, RDZV_ID: several nodes, one
#              torchrun per node meeting at a c10d rendezvous (scripts/common.sh;
#              scripts/slurm/train.sbatch is a Slurm example)
#   PYTHON, TORCHRUN
# With more than one process the arguments are first checked once by a single process, so a
# mistake prints one message instead of one per rank. Works from any directory: the run folder
# goes to ./diffusion_models/ of the current directory (or --checkpoint_path).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

preset=()
if [[ -z "${CONFIG:-}" ]] && ! has_flag --config "$@" && ! has_flag --data_dir "$@" \
    && ! has_flag --resume_checkpoint "$@"; then
    CONFIG="$ROOT/configs/qqp.yaml"
    DATA_DIR="${DATA_DIR:-$ROOT/datasets/QQP}"
    echo "train.sh: no --config, --data_dir or --resume_checkpoint given: using the preset $CONFIG with --data_dir $DATA_DIR" >&2
    if [[ ! -d "$DATA_DIR" ]]; then
        echo "train.sh: error: $DATA_DIR not found: the QQP data is not bundled; datasets/README.md" \
            "($ROOT/datasets/README.md) says how to get it. To train on the bundled demo data:" \
            "NPROC=1 bash scripts/train.sh --config configs/demo.yaml" >&2
        exit 2
    fi
fi
[[ -n "${CONFIG:-}" ]] && preset+=(--config "$CONFIG")
[[ -n "${DATA_DIR:-}" ]] && preset+=(--data_dir "$DATA_DIR")
args=("${preset[@]}" "$@")

torch_launch "$ROOT/run_train.py"
if ((NNODES * NPROC > 1)) && ! has_flag --help "$@" && ! has_flag -h "$@"; then
    # one parse-and-validate pass before starting the ranks
    "$PYTHON" "$ROOT/run_train.py" --check_args "${args[@]}"
    echo "train.sh: $NNODES node(s) x $NPROC process(es): ${LAUNCH[*]}" >&2
fi
exec "${LAUNCH[@]}" "${args[@]}"
