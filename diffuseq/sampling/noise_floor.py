"""Noise floor at decoding time: the network is never told a noise level below ``t_min``.

DINOISER (Ye et al. 2023, "DINOISER: Diffused Conditional Sequence Learning by Manipulating
Noises") trains only on noise scales above a floor (``--noise_floor F``, training side:
:mod:`diffuseq.diffusion.timestep_sampling`; both read ``t_min`` from
:func:`diffuseq.diffusion.timesteps.noise_floor_step`) and, when sampling, feeds the model noise
levels no smaller than that floor. :class:`NoiseFloored` does this for every sampler at once:
it is a ``model(x, t)`` callable that replaces the time input by ``max(t, t_min)``, in the
units the network sees (:meth:`~diffuseq.diffusion.gaussian.GaussianDiffusion.network_time`
of the original index ``t_min = round(F·T)``, so respaced grids and DPM-Solver++-v2's
``t·1000`` are floored alike). The sampler's own schedule (its ``x_t`` updates) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.timesteps import noise_floor_step

__all__ = ["NoiseFloored", "noise_floor_time"]


def noise_floor_time(diffusion: GaussianDiffusion, noise_floor: float) -> torch.Tensor:
    """The network time of ``t_min = round(F·T_orig)``: float32 scalar tensor."""
    t_min = noise_floor_step(noise_floor, diffusion.original_num_steps)
    return diffusion.network_time(torch.tensor(t_min))


class NoiseFloored:
    """Wrap ``model(x, t, **kw)`` into ``model(x, max(t, floor), **kw)``.

    Stateless; composes with :class:`~diffuseq.sampling.self_cond.SelfConditioned` in
    either order (keyword arguments such as ``self_cond`` pass through).

    Args:
        model: the denoiser ``model(x [B,L,h], timesteps float32 [B]) -> x̂_0 [B,L,h]``.
        floor: the smallest network time, a float32 scalar (:func:`noise_floor_time`).
    """

    def __init__(self, model: Callable[..., torch.Tensor], floor: torch.Tensor) -> None:
        self.model = model
        self.floor = floor

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        floored = torch.maximum(timesteps, self.floor.to(timesteps.device, timesteps.dtype))
        return self.model(x, floored, **kwargs)
