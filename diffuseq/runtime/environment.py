"""What a run ran on: library versions, the toolkit's git commit and the host's devices.

Numbers depend on library versions (README, "Pinned versions"), so every launch of a training
run records its environment in ``<run>/environment.json`` (rank 0, written atomically). A
resumed run appends its launch to the list, keeping the earlier ones, so the first entry is
always the environment the run started in::

    {"format": "diffuseq-environment", "version": 1,
     "launches": [{"time": "2026-12-02T06:30:00Z", "start_step": 0, "world_size": 1,
                   "device": "cpu", "python": {...}, "packages": {...}, "torch": {...},
                   "diffuseq": {"version": "0.1.0", "git_commit": "0c7626c...", "git_dirty": false},
                   "host": {...}}, ...]}

Values that cannot be found (a package that is not installed, a checkout that is not a git
repository, no GPU) are ``null``; collecting never fails a run. The original recorded nothing
of the kind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from diffuseq.runtime.logger import get_logger
from diffuseq.store.safe_io import atomic_write_text

__all__ = ["ENVIRONMENT_FILE", "collect_environment", "git_revision", "record_environment"]

ENVIRONMENT_FILE = "environment.json"
FORMAT = "diffuseq-environment"
VERSION = 1
# Distributions whose versions are recorded (importlib.metadata: nothing is imported).
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "diffusers",
    "safetensors",
    "huggingface_hub",
    "tensorboard",
)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, ``None`` if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_revision(folder: str | Path | None = None) -> dict[str, Any]:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the checkout holding
    ``folder`` (default: the one the ``diffuseq`` package was imported from).

    Dirty means tracked files differ from the commit (untracked files are ignored). Fails
    silently to ``None`` values: no git, not a checkout (an installed wheel), a timeout.
    """
    root = Path(folder) if folder is not None else Path(__file__).resolve().parents[2]
    unknown: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    if not (root / ".git").exists():  # a folder in a worktree has a .git file
        return unknown
    try:
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_commit": commit or None, "git_dirty": bool(status)}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _torch_info() -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "gpus": gpus,
        "num_threads": torch.get_num_threads(),
    }


def collect_environment() -> dict[str, Any]:
    """The environment of this process (see the module docstring for the keys)."""
    import diffuseq

    torch_info = _torch_info()
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "packages": {name: package_version(name) for name in PACKAGES},
        "torch": torch_info,
        "diffuseq": {"version": diffuseq.__version__, **git_revision()},
        "host": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpu_count": len(torch_info["gpus"]),
            "gpu": torch_info["gpus"][0]["name"] if torch_info["gpus"] else None,
        },
    }


def read_launches(path: str | Path) -> list[dict[str, Any]]:
    """The launches recorded in an ``environment.json`` (``[]`` if missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    launches = data.get("launches") if isinstance(data, dict) else None
    return [x for x in launches if isinstance(x, dict)] if isinstance(launches, list) else []


def record_environment(
    run_dir: str | Path, *, start_step: int = 0, world_size: int = 1, device: str = ""
) -> Path:
    """Append this launch's environment to ``run_dir/environment.json`` (atomically; call on
    rank 0, holding the run folder's lock). Earlier launches are kept; an unreadable file is
    replaced, with a warning."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    launches = read_launches(path)
    if not launches and path.exists():
        get_logger("environment").warning("%s is unreadable; starting a new record", path)
    launch = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "start_step": int(start_step),
        "world_size": int(world_size),
        "device": str(device),
        **collect_environment(),
    }
    record = {"format": FORMAT, "version": VERSION, "launches": [*launches, launch]}
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")
