#!/usr/bin/env bash
# Run the test suite (installs the dependencies first if they are missing), with one torch
# thread per idle core (OMP_NUM_THREADS wins). Arguments go to pytest, e.g. `-m "not slow"`.
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
exec "$PYTHON" -m pytest -q "$@"
