"""DPM-Solver++(2M) from diffusers' scheduler, driven by our x_0 loop with rounding and anchoring."""

from __future__ import annotations

import warnings

import torch

from diffuseq.diffusion.gaussian import DenoisedFn, GaussianDiffusion
from diffuseq.sampling.common import Callback, Model, x0_scheduler_loop
from diffuseq.sampling.noise import NoiseStream

__all__ = ["dpm_solver_sample"]


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    input_mask: torch.Tensor,
    x_start: torch.Tensor,
    denoised_fn: DenoisedFn | None = None,
    clamp_step: int = 0,
    noise: NoiseStream | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    steps: int,
    mean_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, ``steps`` model calls.

    diffusers' ``DPMSolverMultistepScheduler`` on the full chain (``trained_betas`` = our
    betas, ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``prediction_type="sample"``,
    ``lower_order_final=True``, ``final_sigmas_type="zero"``): levels
    ``linspace(0, T−1, steps+1)`` rounded, descending, without the last (so starting at T−1;
    every level when ``steps = T``);
    the final update goes to σ = 0 and returns the last (rounded) x̂_0. The network gets
    ``diffusion.scale_timesteps(t)``. Rounding, anchoring and the v2 ``μ`` shift as
    :func:`x0_scheduler_loop`. Deterministic: ``noise`` is unused.
    """
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=diffusion.num_timesteps,
        trained_betas=diffusion.betas,
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="sample",
        thresholding=False,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )
    T = diffusion.num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    with warnings.catch_warnings():  # diffusers calls np.array on a tensor (numpy 2 notice)
        warnings.filterwarnings(
            "ignore", message="__array__ implementation", category=DeprecationWarning
        )
        # linspace levels are distinct for steps ≤ T−1; steps = T visits every level.
        scheduler.set_timesteps(steps) if steps < T else scheduler.set_timesteps(
            timesteps=list(range(T))[::-1]
        )
    levels = scheduler.timesteps.tolist()
    return x0_scheduler_loop(
        model,
        diffusion,
        scheduler,
        levels,
        x_T,
        input_mask=input_mask,
        x_start=x_start,
        denoised_fn=denoised_fn,
        clamp_step=clamp_step,
        callback=callback,
        progress=progress,
        mean_embed=mean_embed,
        desc="dpm-solver++",
    )
