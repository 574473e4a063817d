#!/usr/bin/env bash
# Install the toolkit and its dependencies into the current Python environment.
# torch goes first: on this kind of machine `torch==2.13.0` is a local CPU wheel, and letting
# pip resolve torch through another package would pull gigabytes of CUDA packages.
# On a GPU cluster install the torch build for your CUDA first (TORCH_SPEC=skip keeps it).
# Then the package with every extra (pyproject.toml holds the one dependency list, as lower
# bounds), at the versions that reproduce the published numbers (constraints.txt).
# EXTRAS=train (or decode, eval, ...) installs less; EXTRAS= installs the core only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS-all}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
env_dir="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
in_venv="$("$PYTHON" -c 'import sys; print("yes" if sys.prefix != sys.base_prefix else "no")')"
if [ "$TORCH_SPEC" = "skip" ]; then what="the toolkit (torch kept as installed)"; else what="$TORCH_SPEC, then the toolkit"; fi
echo "install.sh: installing $what${EXTRAS:+ with extras [$EXTRAS]} into $env_dir"
echo "install.sh: about 1.6 GB and a few minutes on a first install (pip shows its progress)"
if [ "$in_venv" = "no" ]; then
    echo "install.sh: $env_dir is not a virtual environment; to keep it apart, stop now (Ctrl-C) and run"
    echo "            python3 -m venv .venv && . .venv/bin/activate, then this command again"
fi
if [ "$TORCH_SPEC" != "skip" ]; then
    "$PYTHON" -m pip install --progress-bar on "$TORCH_SPEC"
fi
"$PYTHON" -m pip install --progress-bar on -c "$root/constraints.txt" -e "$root${EXTRAS:+[$EXTRAS]}"
echo "install.sh: done"
