"""Checkpoint files: atomic writes, full training states, EMA files, the latest pointer, resume.

Replaces the checkpoint part of the original's `train_util.py` (docs/original.md §6.7):

* The original wrote only ``ema_{rate}_{step:06d}.pt`` files and resumed by parsing the step
  out of the file name (six digits assumed, docs/original.md §10.1 item 21). Here a run folder also holds
  full training states ``state_{step:06d}.pt`` (model, EMA(s), optimizer, scaler, sampler
  history, every rank's RNG states, data position, step, config) and ``latest.json`` naming
  the newest one, written last. EMA files keep the original's name and format so the original
  decoding scripts load them.
* Every file is written atomically (:func:`diffuseq.store.safe_io.atomic_write`): ``<name>.<pid>.tmp``
  in the same folder, flushed and fsynced, then ``os.replace``d, then the folder is fsynced. A
  crash never leaves a truncated file under a final name.
* Everything is stored as tensors, dicts, lists, numbers and strings, so every file loads with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diffuseq.errors import CheckpointError, first_sentence
from diffuseq.runtime.logger import get_logger
from diffuseq.store.safe_io import atomic_write, atomic_write_text

STATE_FORMAT = "diffuseq-train-state"
STATE_VERSION = 1
LATEST_NAME = "latest.json"
_STATE_RE = re.compile(r"^state_(\d+)\.pt$")
_EMA_RE = re.compile(r"^ema_(.+)_(\d+)\.pt$")


def state_file_name(step: int) -> str:
    """``state_{step:06d}.pt``: the full training state after ``step`` optimizer updates."""
    return f"state_{step:06d}.pt"


def ema_file_name(rate: float, step: int) -> str:
    """The original's EMA file name ``ema_{str(float(rate))}_{step:06d}.pt``
    (``ema_0.9999_050000.pt``)."""
    return f"ema_{float(rate)}_{step:06d}.pt"


# ---------------------------------------------------------------------------------- writing


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same folder, then
    ``os.replace``)."""
    return atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def save_ema_file(
    run_dir: str | Path, *, rate: float, step: int, state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``run_dir/ema_{rate}_{step:06d}.pt`` (an original-format state dict, see
    :func:`diffuseq.models.denoiser.state_dict_for_saving`)."""
    return atomic_torch_save(state_dict, Path(run_dir) / ema_file_name(rate, step))


def write_latest(run_dir: str | Path, *, state_name: str, step: int) -> Path:
    """Point ``latest.json`` at a complete state file (written after that file)."""
    return atomic_write_text(
        Path(run_dir) / LATEST_NAME, json.dumps({"state": state_name, "step": step}) + "\n"
    )


def prune_states(run_dir: str | Path, *, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` state files (``keep <= 0``: keep all). EMA files are
    never deleted, nor the state ``latest.json`` names. Returns the deleted paths."""
    if keep <= 0:
        return []
    protected = _latest_target(Path(run_dir))
    deleted = []
    for _, path in list_state_files(run_dir)[:-keep]:
        if protected is not None and path.name == protected:
            continue
        path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted


# ---------------------------------------------------------------------------------- reading


def load_state_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU (``mmap``: map the tensors' storage
    instead of reading it, for large files that are only copied from).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or holds disallowed objects;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:
            if not mmap:
                raise
            # legacy (pre-zip) files cannot be memory-mapped: read them whole
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        text = str(err).strip()
        if text.startswith("Weights only load failed"):
            reason = (
                "it holds objects other than tensors and plain data, or is no checkpoint at all"
            )
        else:
            reason = f"{type(err).__name__}: {first_sentence(text) or 'no details'}"
        raise CheckpointError(
            f"checkpoint {path} cannot be read: it is truncated, corrupt or not a PyTorch "
            f"checkpoint ({reason}); use another checkpoint"
        ) from None


def is_train_state(obj: Any) -> bool:
    """Whether a loaded object is one of our full training states."""
    return isinstance(obj, Mapping) and obj.get("format") == STATE_FORMAT


def list_state_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``state_*.pt`` in ``run_dir``, oldest first (no temp files)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STATE_RE.match(p.name)) and p.is_file()
    ]
    return sorted(found)


def save_failure(err: OSError, run_dir: str | Path, step: int, last_saved_step: int) -> str:
    """The one message of a checkpoint that could not be written (a full disk, a quota): the
    reason, and the last complete checkpoint to continue from. Files are written whole or not
    at all (temporary name, then rename), so nothing of ``step`` is left half-written."""
    folder = Path(run_dir)
    reason = err.strerror or str(err) or type(err).__name__
    where = f" while writing {Path(err.filename).name}" if err.filename else ""
    latest = _latest_target(folder)
    if latest and (folder / latest).is_file():
        last = f"the last complete checkpoint is {folder / latest}"
    elif last_saved_step > 0:
        last = f"the last complete checkpoint is step {last_saved_step} in {folder}"
    else:
        last = "no complete checkpoint was saved before"
    return (
        f"cannot save step {step} to {folder}: {reason}{where} (no half-written file is left); "
        f"{last}. Free space (or pass another --checkpoint_path for new runs), then continue "
        "with --resume_checkpoint auto"
    )


def _latest_target(folder: Path) -> str | None:
    try:
        data = json.loads((folder / LATEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("state") if isinstance(data, dict) else None
    return name if isinstance(name, str) and _STATE_RE.match(name) else None


def _is_complete(path: Path) -> bool:
    try:
        obj = load_state_file(path, mmap=True)
    except CheckpointError:
        return False
    return is_train_state(obj)


def find_latest_state(run_dir: str | Path) -> Path | None:
    """The newest complete training state in ``run_dir``, or ``None``.

    Follows ``latest.json`` if the file it names loads; otherwise scans ``state_*.pt`` newest
    first, skipping files that do not load (each candidate is opened memory-mapped, so this does
    not read whole files).
    """
    folder = Path(run_dir)
    log = get_logger("checkpoint")
    target = _latest_target(folder)
    if target is not None:
        if _is_complete(folder / target):
            return folder / target
        log.warning(
            "%s names %s, which is missing or incomplete; scanning the folder",
            folder / LATEST_NAME,
            target,
        )
    for _, path in reversed(list_state_files(folder)):
        if _is_complete(path):
            return path
        log.warning("skipping %s: it is truncated or corrupt", path)
    return None


def parse_step_from_ema_name(path: str | Path) -> int:
    """The step in an original EMA file name ``ema_{rate}_{step}.pt`` (any number of digits).

    Only for the original's files, which carry no step inside (docs/original.md §6.7); our own files store
    the step in the training state.

    Raises:
        CheckpointError: the name does not follow the pattern.
    """
    match = _EMA_RE.match(Path(path).name)
    if match is None:
        raise CheckpointError(
            f"cannot read the step from {Path(path).name!r}: expected an original EMA file name "
            "like ema_0.9999_050000.pt"
        )
    return int(match.group(2))


# ---------------------------------------------------------------------------------- RNG


def capture_rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """This process's random-number state (torch CPU, CUDA device, numpy legacy, Python
    ``random``) as tensors, lists and numbers, so that ``weights_only`` loading accepts it."""
    device = torch.device(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA part only when both sides used CUDA)."""
    device = torch.device(device)
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["state"]), python_state["gauss_next"])
    )


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's legacy global RNG and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- resume


@dataclass
class ResumeSource:
    """What ``--resume_checkpoint`` resolved to.

    ``kind``: ``"none"`` (fresh start), ``"state"`` (one of our training states: exact resume in
    its folder) or ``"weights"`` (an original-format EMA/model file: weights only, new folder).
    ``payload`` is the loaded file (CPU tensors), ``step`` the number of updates it holds.
    """

    kind: Literal["none", "state", "weights"]
    path: Path | None = None
    step: int = 0
    payload: Any = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.kind == "state" and self.path is not None else None


def resolve_resume(spec: str, *, checkpoint_path: str = "") -> ResumeSource:
    """Resolve ``--resume_checkpoint``: ``none``, ``auto``, a run folder, a state file or an
    original EMA file.

    * ``auto``: the newest complete state in ``--checkpoint_path`` (fresh start if there is none).
    * a folder: its newest complete state (error if there is none).
    * a file: our state (exact resume) or a state dict of model weights; for the latter the step
      is read from the original's file name (``ema_0.9999_010000.pt`` → 10000, 0 if the name has
      no step).

    Raises:
        CheckpointError: missing/corrupt file, folder without states.
    """
    spec = (spec or "").strip()
    if spec.lower() in ("", "none"):
        return ResumeSource("none")
    if spec == "auto":
        if not checkpoint_path:
            raise CheckpointError(
                "--resume_checkpoint auto needs --checkpoint_path (the run folder to continue)"
            )
        latest = find_latest_state(checkpoint_path)
        return _state_source(latest) if latest is not None else ResumeSource("none")
    path = Path(spec)
    if path.is_dir():
        latest = find_latest_state(path)
        if latest is None:
            raise CheckpointError(
                f"--resume_checkpoint {spec}: the folder holds no complete training state "
                "(state_*.pt); to start from original weights pass an ema_*.pt file instead"
            )
        return _state_source(latest)
    if not path.exists():
        raise CheckpointError(f"--resume_checkpoint {spec}: no such file or folder")
    payload = load_state_file(path, mmap=True)
    if is_train_state(payload):
        return ResumeSource("state", path=path, step=int(payload["step"]), payload=payload)
    if not isinstance(payload, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise CheckpointError(
            f"--resume_checkpoint {spec}: neither a training state nor a state dict of "
            "model weights"
        )
    try:
        step = parse_step_from_ema_name(path)
    except CheckpointError:
        get_logger("checkpoint").warning(
            "%s: no step in the file name; counting steps from 0", path
        )
        step = 0
    return ResumeSource("weights", path=path, step=step, payload=payload)


def _state_source(path: Path) -> ResumeSource:
    payload = load_state_file(path, mmap=True)
    if not is_train_state(payload):
        raise CheckpointError(f"{path} is not a diffuseq training state")
    return ResumeSource("state", path=path, step=int(payload["step"]), payload=payload)


def copy_named_tensors(
    targets: list[torch.Tensor], names: list[str], source: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Copy ``source[name]`` into each target (in place, no grad); a clear error if one is
    missing or has another shape (``what`` names the checkpoint part in the message)."""
    missing = [n for n in names if n not in source]
    if missing:
        raise CheckpointError(f"{what}: the checkpoint lacks {', '.join(missing[:5])}")
    with torch.no_grad():
        for target, name in zip(targets, names):
            value = source[name]
            if value.shape != target.shape:
                raise CheckpointError(
                    f"{what}: {name} has shape {list(value.shape)} in the checkpoint, "
                    f"{list(target.shape)} here"
                )
            target.copy_(value)


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
