# Shared by the launchers in scripts/ (sourced, not run): how many processes and threads to use
# and the command that starts a Python entry point on them.
#
#   source "$root/scripts/common.sh"
#   torch_launch "$root/run_train.py"; "${LAUNCH[@]}" --flag ...
#
# Environment read here (all optional):
#   PYTHON         interpreter (default python3)
#   TORCHRUN       torchrun command (default: torchrun, else `$PYTHON -m torch.distributed.run`)
#   NPROC          processes per node (default: the number of visible GPUs, else 1)
#   NNODES         nodes (default 1); > 1 uses torchrun's c10d rendezvous at RDZV_ENDPOINT
#   RDZV_ENDPOINT  host:port of the rendezvous (default MASTER_ADDR:MASTER_PORT, port 29500)
#   RDZV_ID        rendezvous id shared by all nodes of one job (default SLURM_JOB_ID or diffuseq)
#   NODE_RANK      0 on the node that hosts the rendezvous store (MASTER_ADDR), > 0 elsewhere;
#                  unset: torchrun decides by matching MASTER_ADDR against the host's names.
#                  Global ranks are assigned by the rendezvous, not by NODE_RANK.

PYTHON="${PYTHON:-python3}"

# GPUs this process may use: `nvidia-smi -L` (no CUDA initialisation, unlike torch), limited to
# the CUDA_VISIBLE_DEVICES list when that is set; 0 without an NVIDIA driver.
visible_gpus() {
    local count=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        count=1000  # no nvidia-smi to ask: trust the list
    fi
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        local list="${CUDA_VISIBLE_DEVICES// /}" listed=0
        local -a ids=()
        # CUDA stops at the first negative id: "-1" hides every GPU, "0,-1,1" leaves GPU 0
        [[ "$list" == -* ]] && list=""
        list="${list%%,-*}"
        IFS=, read -ra ids <<<"$list"
        for id in "${ids[@]}"; do [[ -n "$id" ]] && listed=$((listed + 1)); done
        ((listed < count)) && count=$listed
    fi
    echo "$count"
}

# Processes per node: NPROC, else one per visible GPU, else 1.
default_nproc() {
    local gpus
    gpus="$(visible_gpus)"
    ((gpus > 0)) && echo "$gpus" || echo 1
}

# Intra-op threads that are fastest on this machine as it is now: one per idle core
# (cores minus the 1-minute load average, at least 1), never more threads than idle cores;
# oversubscribed cores made a 2-thread demo step 30x slower on a busy 2-core machine.
idle_cores() {
    "$PYTHON" -c '
import os
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
print(max(1, min(cores, cores - round(load))), cores, f"{load:.2f}")'
}

# Export OMP_NUM_THREADS (an explicit value wins) and say why; $1 names the caller.
set_threads() {
    if [[ -n "${OMP_NUM_THREADS:-}" ]]; then
        echo "$1: OMP_NUM_THREADS=$OMP_NUM_THREADS (from the environment)" >&2
        return
    fi
    local idle cores load
    read -r idle cores load <<<"$(idle_cores)"
    export OMP_NUM_THREADS="$idle"
    echo "$1: $idle torch thread(s): $cores core(s), load average $load (set OMP_NUM_THREADS to override)" >&2
}

# Set the array LAUNCH to the command that runs the Python script $1 on NNODES x NPROC
# processes: plain python for one process, torchrun --standalone on one node, torchrun with
# c10d rendezvous across nodes (one torchrun per node, e.g. scripts/slurm/train.sbatch).
torch_launch() {
    local script="$1"
    NPROC="${NPROC:-$(default_nproc)}"
    NNODES="${NNODES:-1}"
    local -a torchrun
    if [[ -n "${TORCHRUN:-}" ]]; then
        read -ra torchrun <<<"$TORCHRUN"
    elif command -v torchrun >/dev/null 2>&1; then
        torchrun=(torchrun)
    else
        torchrun=("$PYTHON" -m torch.distributed.run)
    fi
    if ((NNODES > 1)); then
        local endpoint="${RDZV_ENDPOINT:-}"
        if [[ -z "$endpoint" ]]; then
            if [[ -z "${MASTER_ADDR:-}" ]]; then
                echo "NNODES=$NNODES needs MASTER_ADDR (the first node's host name) or RDZV_ENDPOINT=host:port" >&2
                exit 2
            fi
            endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}"
        fi
        LAUNCH=("${torchrun[@]}" --nnodes "$NNODES" --nproc_per_node "$NPROC"
            --rdzv_backend c10d --rdzv_endpoint "$endpoint" --rdzv_id "${RDZV_ID:-${SLURM_JOB_ID:-diffuseq}}")
        if [[ -n "${NODE_RANK:-}" ]]; then
            LAUNCH+=(--rdzv_conf "is_host=$([[ "$NODE_RANK" == 0 ]] && echo 1 || echo 0)")
        fi
        LAUNCH+=("$script")
    elif ((NPROC > 1)); then
        LAUNCH=("${torchrun[@]}" --standalone --nproc_per_node "$NPROC" "$script")
    else
        LAUNCH=("$PYTHON" -u "$script")
    fi
}

# Whether the arguments after $1 contain the flag $1 (as `--flag value` or `--flag=value`).
has_flag() {
    local flag="$1" arg
    shift
    for arg in "$@"; do
        [[ "$arg" == "$flag" || "$arg" == "$flag="* ]] && return 0
    done
    return 1
}

# fresh_folder DIR WHO: make DIR an empty folder that WHO owns (a `.created-by-WHO` file inside).
# A DIR that an earlier WHO run created is removed first; any other existing DIR is left as it
# is and refused (status 2), so nothing the user made is ever deleted.
fresh_folder() {
    local dir="$1" who="$2"
    local marker="$dir/.created-by-$who"
    if [[ -e "$dir" || -L "$dir" ]]; then
        if [[ -d "$dir" && ! -L "$dir" && -f "$marker" ]]; then
            rm -rf -- "$dir"
        else
            echo "$who: $dir exists and was not created by $who; remove it or choose another folder" >&2
            return 2
        fi
    fi
    mkdir -p -- "$dir" && : >"$marker"
}
