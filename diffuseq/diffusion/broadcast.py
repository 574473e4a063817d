"""Reading the float64 coefficient tables at timesteps t, and broadcasting masks.

:func:`extract` is the original's ``_extract_into_tensor``: every per-timestep lookup of the
diffusion indexes a float64 numpy table and casts to float32 here, so all tensor arithmetic is
fp32 as in the original (docs/original.md §5.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["as_mask", "extract", "randn_like_shape"]


def extract(table: np.ndarray, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``table[t]`` cast to float32 and broadcast to ``shape`` (t: int64 ``[B]`` or ``[1]``)."""
    values = torch.from_numpy(table)[t.detach().cpu().long()]
    values = values.to(device=t.device, dtype=torch.float32)
    return values.reshape(values.shape + (1,) * (len(shape) - values.ndim)).expand(*shape)


def as_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Broadcast a ``[B,L]`` or ``[B,L,h]`` mask to ``shape`` ``[B,L,h]``."""
    if mask.ndim == len(shape) - 1:
        mask = mask.unsqueeze(-1)
    return torch.broadcast_to(mask, tuple(shape))


def randn_like_shape(
    shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``N(0, I)`` of ``shape`` in ``like``'s dtype and device, from ``generator``."""
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)
