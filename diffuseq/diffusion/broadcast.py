"""Reading the float64 coefficient tables at timesteps t, broadcasting masks, noise draws.

:func:`extract` is the original's ``_extract_into_tensor``: every per-timestep lookup of the
diffusion indexes a float64 numpy table and casts to float32 here, so all tensor arithmetic is
fp32 as in the original (docs/original.md §5.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MAX_REDRAWS", "as_mask", "extract", "randn_like_shape", "truncate_"]


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


#: Redraw rounds of the original's loop before the rest is drawn by the inverse CDF; with
#: ``P(|x| <= top_p) >= 1/2`` an entry is still outside after 32 rounds with probability
#: below 2**-32, so the loop's draws (and outputs) are kept in practice.
MAX_REDRAWS = 32


def truncate_(row: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Make every entry of the N(0, 1) draw ``row`` lie in ``[-top_p, top_p]``, in place
    (``--top_p``; :meth:`~diffuseq.sampling.noise.NoiseSource.gaussian`, ``p_sample``).

    The original redraws the entries with ``|x| > top_p`` until none is left (rejection
    sampling of the truncated normal), a loop without a bound: ``top_p = 1e-9`` never ends.
    Here it runs at most :data:`MAX_REDRAWS` rounds, and only when at least half of the draws
    land inside (``top_p >= 0.674``); the entries still outside are then drawn from the same
    truncated normal by its inverse CDF, ``x = √2·erfinv(v)`` with ``v`` uniform in
    ``(-erf(top_p/√2), erf(top_p/√2))`` (float64, from the row's generator). The distribution
    is the same either way; the time is bounded for every ``top_p > 0``.
    """
    outside = row.abs() > top_p
    inside = math.erf(top_p / math.sqrt(2.0))  # P(|x| <= top_p)
    for _ in range(MAX_REDRAWS if inside >= 0.5 else 0):
        if not outside.any():
            return row
        row[outside] = randn_like_shape((int(outside.sum()),), row, generator)
        outside = row.abs() > top_p
    count = int(outside.sum())
    if count:
        u = torch.rand(count, generator=generator, device=row.device, dtype=torch.float64)
        x = math.sqrt(2.0) * torch.special.erfinv((2.0 * u - 1.0) * inside)
        row[outside] = x.clamp_(-top_p, top_p).to(row.dtype)
    return row
