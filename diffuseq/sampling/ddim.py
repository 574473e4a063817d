"""DDIM (η = 0) on respaced levels, and the original v1 pseudo-DDIM (docs/original.md §5.11.2)."""

from __future__ import annotations

import torch

from diffuseq.diffusion.respace import respaced_betas, space_timesteps
from diffuseq.sampling.common import progress_steps, x0_scheduler_loop
from diffuseq.sampling.inputs import SamplerInputs

__all__ = ["adjacent_timesteps", "ddim_adjacent_sample", "ddim_sample", "ddim_timesteps"]


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Respaced DDIM levels, descending: ``steps`` indices from ``T−1`` down to ``0``.

    The kept set is :func:`~diffuseq.diffusion.respace.space_timesteps` with one section (evenly spaced,
    both ends included, as improved-diffusion's respacing); one step keeps only ``T−1``.

    >>> ddim_timesteps(2000, 5)
    [1999, 1499, 1000, 500, 0]
    >>> ddim_timesteps(100, 1)
    [99]
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return sorted(space_timesteps(num_timesteps, [steps]), reverse=True)


@torch.no_grad()
def ddim_sample(inputs: SamplerInputs) -> torch.Tensor:
    """DDIM with η = 0 (Song et al. 2021, eq. 12) over ``steps`` respaced levels.

    Visits exactly :func:`ddim_timesteps` (``T−1 … 0``, one model call each) and steps from
    each level to the *next visited* one, the last step to ᾱ = 1 (the clean x̂_0):
    ``x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε̂``, ``ε̂ = (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t)``.
    Implemented as diffusers' ``DDIMScheduler`` on the respaced chain
    (``trained_betas`` = β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}, ``prediction_type="sample"``,
    ``clip_sample=False``, ``set_alpha_to_one=True``), so its ``t − 1`` is the previous kept
    level. Deterministic: ``noise`` and ``top_p`` are unused. See :func:`x0_scheduler_loop`
    for rounding, anchoring and the v2 ``μ`` shift.
    """
    from diffusers import DDIMScheduler

    diffusion = inputs.diffusion
    levels = ddim_timesteps(diffusion.num_timesteps, inputs.step_count("ddim"))
    betas, _ = respaced_betas(diffusion.betas, levels)
    scheduler = DDIMScheduler(
        num_train_timesteps=len(levels),
        trained_betas=betas,
        prediction_type="sample",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(len(levels))
    return x0_scheduler_loop(inputs, scheduler, levels, desc="ddim")


def adjacent_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Levels the original v1 "DDIM" visits: ``list(range(T))[::-1][::T // steps]`` (docs/original.md §5.11.2).

    >>> adjacent_timesteps(100, 8)
    [99, 87, 75, 63, 51, 39, 27, 15, 3]
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    return list(range(num_timesteps))[::-1][:: num_timesteps // steps]


@torch.no_grad()
def ddim_adjacent_sample(inputs: SamplerInputs) -> torch.Tensor:
    """The original v1 pseudo-DDIM (docs/original.md §5.11.2, §10.1 item 9), kept for reproduction.

    At each level of :func:`adjacent_timesteps` (``⌊(T−1)/gap⌋ + 1`` model calls, e.g. 9 for
    T=100, steps=8) one DDIM η=0 step to the **adjacent** level ``t−1``
    (:meth:`GaussianDiffusion.ddim_sample` with ``t_prev=None``), rounding at every step
    (``clamp_step`` ignored, as the original), then source anchoring. The result sits at noise
    level ᾱ_{t_last−1}, not at a clean x_0. ``noise``, ``top_p`` and ``mean_embed`` are unused
    (η = 0; the original v1 path has no μ).
    """
    model, diffusion, x = inputs.network(), inputs.diffusion, inputs.x_T
    mask, x_start, rounding = inputs.input_mask, inputs.x_start, inputs.denoised_fn
    levels = adjacent_timesteps(diffusion.num_timesteps, inputs.step_count("ddim-adjacent"))
    for step, t in enumerate(progress_steps(levels, inputs.progress, "ddim-adjacent")):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = diffusion.ddim_sample(
            model, x, tt, t_prev=None, mask=mask, x_start=x_start, denoised_fn=rounding
        )
        x = out["sample"]
        if inputs.callback is not None:
            inputs.callback({"step": step, "t": t, **out})
    return x
