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


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank (GPU index) and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set by torchrun (defaults: single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init(*, device: str | None = None, timeout_minutes: int = 30) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick this rank's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA if available, else CPU).

    Returns:
        ``(info, device)``; with more than one process the default group is initialised.
    """
    info = env_info()
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{info.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if info.world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            timeout=timedelta(minutes=timeout_minutes),
        )
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
