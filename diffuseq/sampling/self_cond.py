"""Self-conditioning at decoding time: each model call sees the previous call's x̂_0.

Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", §3.3; used by CDCD and
SeqDiffuSeq) trains the denoiser with its own earlier estimate as an extra input
(:func:`diffuseq.diffusion.losses.self_condition`). At sampling time the estimate of step
``k`` becomes the self-condition of step ``k+1``. :class:`SelfConditioned` does this for every
sampler at once: it is a ``model(x, t)`` callable, so the samplers' shared signature does not
change. The first call gets zeros, as in training's "no estimate" half.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SelfConditioned"]


class SelfConditioned:
    """Wrap ``model(x, t, self_cond=...)`` into a stateful ``model(x, t)`` for one sampling run.

    Make a new one per batch (the state is that batch's last ``x̂_0`` ``[B, L, h]``).

    Args:
        model: the denoiser built with ``self_cond=True`` (a ``TransformerNetModel``).
    """

    def __init__(self, model: Callable[..., torch.Tensor]) -> None:
        self.model = model
        self.previous: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        condition = torch.zeros_like(x) if self.previous is None else self.previous.to(x.dtype)
        estimate = self.model(x, timesteps, self_cond=condition)  # x̂_0 [B, L, h]
        self.previous = estimate.detach()
        return estimate
