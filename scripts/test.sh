#!/usr/bin/env bash
# Run the test suite (installs the dependencies first if they are missing), with one torch
# thread per idle core (OMP_NUM_THREADS wins). Arguments go to pytest.
# By default the tests marked `slow` (34 that start several processes or run a benchmark smoke
# test) are left out: the rest ran in 4.4 min on a busy 2-core machine, the whole suite in
# 17.5 min. `--all` runs everything (CI does), `-m slow` only the slow ones; a `-m` of your
# own replaces the default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch, transformers, diffusers, nltk, torchmetrics, yaml, pytest" 2>/dev/null; then
    bash "$root/scripts/install.sh"
fi
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# shellcheck source=scripts/common.sh
source scripts/common.sh
set_threads test.sh  # one thread per idle core unless OMP_NUM_THREADS is set
args=() marker=(-m "not slow")
for arg in "$@"; do
    case "$arg" in
        --all) marker=() ;;
        -m | -m*) marker=(); args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
if [ ${#marker[@]} -gt 0 ]; then
    echo "test.sh: the slow tests (several processes, benchmark smoke tests; about 13 more minutes) are left out: bash scripts/test.sh --all runs them too"
fi
exec "$PYTHON" -m pytest -q "${marker[@]}" "${args[@]}"
