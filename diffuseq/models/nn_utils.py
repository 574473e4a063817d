"""Small tensor helpers shared by the model and the diffusion math.

Reimplements `diffuseq/utils/nn.py` of the original (docs/original.md §5.7, §4.2): only the pieces the
pipeline uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding, cosine half first (docs/original.md §4.2).

    Args:
        timesteps: ``[B]`` (possibly fractional) timestep values, already rescaled.
        dim: output size ``d``; a zero column is appended when ``d`` is odd.
        max_period: controls the minimum frequency.

    Returns:
        ``[B, d]`` float32: ``[cos(t·f_0..f_{half-1}), sin(t·f_0..f_{half-1})]`` with
        ``f_i = exp(-ln(max_period)·i/half)``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: ``[B, ...] -> [B]``."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


@torch.no_grad()
def update_ema(
    target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], rate: float
) -> None:
    """In place ``target <- rate·target + (1-rate)·source`` (no bias correction, docs/original.md §6.2)."""
    targets = list(target_params)
    sources = [p.detach() for p in source_params]
    if targets:
        torch._foreach_lerp_(targets, sources, 1.0 - rate)


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """``√Σ grad²`` over all parameters, on the device (no synchronisation)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def ddp_without_buffer_sync() -> dict[str, bool]:
    """The ``DistributedDataParallel`` keyword that turns off the per-forward buffer sync
    (the original's ``broadcast_buffers=False``).

    torch ≥ 2.13 deprecates ``broadcast_buffers`` (a FutureWarning on every rank) for
    ``forward_sync_buffers``, which also syncs buffers once at init. Our only buffer is the
    constant ``position_ids``, identical on every rank, so that sync changes nothing.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
