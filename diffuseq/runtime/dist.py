"""Distributed set-up: the only module that reads torchrun's environment.

Replaces the original's `dist_util.py` (docs/original.md §6.8): no host-name resolution, no
``LOCAL_RANK`` requirement. Without torchrun's variables everything runs as a single
process and every collective below is a no-op. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist

from diffuseq.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank (GPU index) and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: Seconds every process waits for the others to join the group (``DIFFUSEQ_JOIN_TIMEOUT``).
DEFAULT_JOIN_TIMEOUT = 600.0

_LAUNCH_HINT = (
    "launch several processes with torchrun (scripts/train.sh, scripts/run_decode.sh), or "
    "unset WORLD_SIZE/RANK to run as one process"
)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={value!r} is not an integer; {_LAUNCH_HINT}"
        ) from None


def env_info() -> DistInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set by torchrun (defaults: single process).

    Raises:
        ConfigError: a value that is not an integer, or an inconsistent set (``RANK`` missing
            or not below ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` missing).
    """
    info = DistInfo(
        rank=_env_int("RANK", 0),
        local_rank=_env_int("LOCAL_RANK", 0),
        world_size=_env_int("WORLD_SIZE", 1),
    )
    if info.world_size < 1:
        raise ConfigError(f"WORLD_SIZE={info.world_size} must be at least 1; {_LAUNCH_HINT}")
    if info.world_size > 1:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={info.world_size} but {', '.join(missing)} not set; {_LAUNCH_HINT}"
            )
        if not 0 <= info.rank < info.world_size:
            raise ConfigError(
                f"RANK={info.rank} is not in [0, WORLD_SIZE={info.world_size}); {_LAUNCH_HINT}"
            )
    return info


def join_timeout() -> float:
    """``DIFFUSEQ_JOIN_TIMEOUT`` seconds (default :data:`DEFAULT_JOIN_TIMEOUT`)."""
    value = os.environ.get("DIFFUSEQ_JOIN_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_JOIN_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"DIFFUSEQ_JOIN_TIMEOUT={value!r} must be a positive number of seconds")
    return seconds


def _join_group(info: DistInfo, backend: str, timeout: timedelta) -> None:
    """Form the default group, failing with a message if the processes do not all arrive
    within :func:`join_timeout` seconds (the collectives' own ``timeout`` is longer)."""
    limit = join_timeout()
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    late = (
        f"not all {info.world_size} processes joined at {where} within {limit:g} s "
        f"(DIFFUSEQ_JOIN_TIMEOUT); {_LAUNCH_HINT}"
    )
    try:
        store, rank, world = next(torch_dist.rendezvous("env://", timeout=timedelta(seconds=limit)))
    except (RuntimeError, ValueError, TimeoutError) as err:  # DistNetworkError/DistStoreError
        raise ConfigError(f"{late} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    # every rank announces itself, then waits for the others (restarts of an elastic job
    # reuse the agent's store, hence the restart count in the key)
    key = f"diffuseq/joined/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store.add(key, 1)
    deadline = time.monotonic() + limit
    while (arrived := store.add(key, 0)) < world:
        if time.monotonic() > deadline:
            raise ConfigError(f"{late} ({arrived} arrived)")
        time.sleep(0.05)
    torch_dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world, timeout=timeout
    )


def init(*, device: str | None = None, timeout_minutes: int = 30) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick this rank's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA if available, else CPU).
        timeout_minutes: the collectives' timeout once the group exists.

    Returns:
        ``(info, device)``; with more than one process the default group is initialised.

    Raises:
        ConfigError: torchrun's variables are inconsistent (:func:`env_info`), or the
            processes did not all join within :func:`join_timeout` seconds.
    """
    info = env_info()
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{info.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if info.world_size > 1 and not torch_dist.is_initialized():
        _join_group(info, "nccl" if use_cuda else "gloo", timedelta(minutes=timeout_minutes))
    return info, dev


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled)."""
    if not is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def all_reduce_max(value: int) -> int:
    """The maximum of an integer over ranks (e.g. to agree on a resume step)."""
    return max(all_gather_object(value))


#: Seconds ``cleanup`` releases the GIL before the process group goes away (see there).
_GLOO_DRAIN_SECONDS = 0.2


def cleanup() -> None:
    """Leave the process group.

    With gloo, first sleep briefly: gloo's worker threads destroy finished collectives
    themselves, and doing so may need the GIL (the collectives of ``broadcast_object`` /
    ``all_gather_object`` hold Python tensors). The group's C++ destructor, which runs when its
    last owner goes (here, or later with the DDP wrapper), joins those threads while holding the
    GIL, so a thread still waiting for it deadlocks the process after its last collective
    (seen with torch 2.13: rank 1 hung in ``~ProcessGroupGloo`` after training finished). The
    sleep lets them finish first; nothing is queued after the last collective.
    """
    if is_initialized():
        if torch_dist.get_backend() == "gloo" and torch_dist.get_world_size() > 1:
            time.sleep(_GLOO_DRAIN_SECONDS)
        torch_dist.destroy_process_group()
