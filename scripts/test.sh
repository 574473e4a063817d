#!/usr/bin/env bash
# Run the test suite (installs the dependencies first if they are missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch, transformers, diffusers, nltk, torchmetrics, yaml, pytest" 2>/dev/null; then
    bash "$root/scripts/install.sh"
fi
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m pytest -q "$@"
