#!/usr/bin/env bash
# Install the toolkit and its dependencies into the current Python environment.
# torch goes first: on this kind of machine `torch==2.13.0` is a local CPU wheel, and letting
# pip resolve torch through another package would pull gigabytes of CUDA packages.
# On a GPU cluster install the torch build for your CUDA first (TORCH_SPEC=skip keeps it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$TORCH_SPEC" != "skip" ]; then
    "$PYTHON" -m pip install -q "$TORCH_SPEC"
fi
"$PYTHON" -m pip install -q -r "$root/requirements.txt"
"$PYTHON" -m pip install -q --no-deps -e "$root"
