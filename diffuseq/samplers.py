"""Sampling loops of DiffuSeq: plain no-grad functions with one shared signature.

``sampler(model, diffusion, x_T, *, input_mask, x_start, denoised_fn, clamp_step, noise,
callback, progress, **specific) -> x_0``

* ``model(x [B,L,h], timesteps float32 [B]) -> x̂_0 [B,L,h]`` (an x_0-predicting network; it may
  be wrapped, e.g. for autocast), ``diffusion`` a :class:`~diffuseq.diffusion.GaussianDiffusion`.
* ``x_T [B,L,h]``: start state ``where(m == 0, x_start, z)``, ``z ~ N(0, I)``.
* ``input_mask [B,L]``: 0 = source side (kept equal to ``x_start``), 1 = target and padding.
* ``x_start [B,L,h]``: the anchor, the clean embeddings x̄_0 = EMB(w) (spec §5.11).
* ``denoised_fn``: rounding to the nearest word embedding (:mod:`diffuseq.rounding`), applied
  to x̂_0 at levels ``t ≥ clamp_step`` (the original's ``clamp_first=True``).
* ``noise``: a :class:`~diffuseq.noise.NoiseStream` (per-example generators).
* ``callback(info: dict)`` after every step (keys ``step, t, sample, pred_xstart`` and
  ``tokens`` when rounding ran); the loops never keep the T intermediate states the original
  returns (spec §5.11: T×B×L×h floats).

Only the final state is returned; the caller turns it into tokens with ``get_logits``.
The v2 solver variant of the original lives in :mod:`diffuseq.solvers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from diffuseq.diffusion import DenoisedFn, GaussianDiffusion
from diffuseq.noise import NoiseStream
from diffuseq.respace import respaced_betas, space_timesteps

__all__ = [
    "Callback",
    "Model",
    "adjacent_timesteps",
    "ancestral_sample",
    "anchor_source",
    "ddim_adjacent_sample",
    "ddim_sample",
    "ddim_timesteps",
    "dpm_solver_sample",
    "progress_steps",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def progress_steps(timesteps: list, progress: bool, desc: str):
    """``timesteps`` wrapped in a tqdm bar when ``progress`` (callers pass ``rank == 0``)."""
    return tqdm(timesteps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def anchor_source(x: torch.Tensor, input_mask: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
    """Source anchoring ``where(m == 0, x_start, x)`` (paper §3: the source x is never noised)."""
    return torch.where(input_mask.unsqueeze(-1) == 0, x_start, x)


def _target_shift(
    input_mask: torch.Tensor, mean_embed: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """v2 soft absorbing state ``μ·m`` ``[B,L,h]`` (zero without μ, spec §5.11.3)."""
    if mean_embed is None:
        return torch.zeros_like(like)
    return mean_embed.to(like.dtype) * input_mask.unsqueeze(-1).to(like.dtype)


def _round(
    denoised_fn: DenoisedFn | None, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if denoised_fn is None:
        return x0, None
    out = denoised_fn(x0)
    return out if isinstance(out, tuple) else (out, None)


@torch.no_grad()
def ancestral_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    input_mask: torch.Tensor,
    x_start: torch.Tensor,
    denoised_fn: DenoisedFn | None = None,
    clamp_step: int = 0,
    noise: NoiseStream,
    callback: Callback | None = None,
    progress: bool = False,
    top_p: float | None = None,
    mean_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as DiffuSeq decodes (spec §5.11.1, §5.11.3).

    1. v2 with μ: ``x ← x_T + μ·m`` (target and padding positions start around μ).
    2. For ``t = T−1, …, 0`` one :meth:`GaussianDiffusion.p_sample` step:
       ``x̂_0 = round(f_θ(x_t, t))`` if ``t ≥ clamp_step`` (else the raw prediction);
       ``x_{t−1} = μ̃_t(x̂_0, x_t) + 1[t≠0]·√Σ_t·ε`` with fixed-large Σ and
       ``ε = noise.gaussian(top_p)`` (entries with ``|ε| > top_p`` redrawn when ``top_p > 0``);
       v2 ``diffusion.denoise``: positions with ``U < denoise_rate·√Σ_t`` become μ;
       finally the source positions are reset to ``x_start``.

    Args:
        top_p: the original's ``--top_p`` noise truncation threshold (``None``/≤0: off).
        mean_embed: μ ``[h]`` of a v2 model (``None`` for v1).
        Others: see the module docstring.

    Returns:
        ``x_0 [B,L,h]``; at ``t = 0`` target positions are exactly ``E[rounded tokens]``.
    """
    x = x_T + _target_shift(input_mask, mean_embed, x_T)
    T = diffusion.num_timesteps
    for step, t in enumerate(progress_steps(list(range(T))[::-1], progress, "ancestral")):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = noise.gaussian(top_p=top_p)
        draw = None
        if diffusion.denoise:
            draw = (noise.uniform() < diffusion.reverse_mask_prob(tt, x.shape[:-1])).to(x.dtype)
        out = diffusion.p_sample(
            model,
            x,
            tt,
            mask=input_mask,
            x_start=x_start,
            noise=eps,
            denoised_fn=denoised_fn if t >= clamp_step else None,
            mean_embed=mean_embed,
            bernoulli_draw=draw,
        )
        x = out["sample"]
        if callback is not None:
            callback({"step": step, "t": t, **out})
    return x


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Respaced DDIM levels, descending: ``steps`` indices from ``T−1`` down to ``0``.

    The kept set is :func:`~diffuseq.respace.space_timesteps` with one section (evenly spaced,
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


def _x0_scheduler_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    scheduler: Any,
    levels: list[int],
    x_T: torch.Tensor,
    *,
    input_mask: torch.Tensor,
    x_start: torch.Tensor,
    denoised_fn: DenoisedFn | None,
    clamp_step: int,
    callback: Callback | None,
    progress: bool,
    mean_embed: torch.Tensor | None,
    desc: str,
) -> torch.Tensor:
    """Drive a diffusers scheduler with an x_0-predicting model (``prediction_type="sample"``).

    ``levels[j]`` is the diffusion index of ``scheduler.timesteps[j]``. Per step:
    ``x̂_0 = round(f_θ(x, t))`` (if ``t ≥ clamp_step``) with source positions set to
    ``x_start``; ``y ← scheduler.step(x̂_0 − μ·m, ·, y)``; source positions anchored again.
    The ODE runs on ``y = x − μ·m`` so that a v2 model sees the states it was trained on
    (``x_t = √ᾱ_t·(x_0 − μ) + √(1−ᾱ_t)·ε + μ`` on the target side; zero shift without μ).
    """
    shift = _target_shift(input_mask, mean_embed, x_T)
    y = x_T
    for step, (k, t) in enumerate(
        progress_steps(list(zip(scheduler.timesteps.tolist(), levels)), progress, desc)
    ):
        tt = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        x0, tokens = _round(
            denoised_fn if t >= clamp_step else None,
            model(y + shift, diffusion.scale_timesteps(tt)),
        )
        x0 = anchor_source(x0, input_mask, x_start)
        y = anchor_source(scheduler.step(x0 - shift, k, y).prev_sample, input_mask, x_start)
        if callback is not None:
            info = {"step": step, "t": t, "sample": y + shift, "pred_xstart": x0}
            callback(info if tokens is None else {**info, "tokens": tokens})
    return y + shift


@torch.no_grad()
def ddim_sample(
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
    """DDIM with η = 0 (Song et al. 2021, eq. 12) over ``steps`` respaced levels.

    Visits exactly :func:`ddim_timesteps` (``T−1 … 0``, one model call each) and steps from
    each level to the *next visited* one, the last step to ᾱ = 1 (the clean x̂_0):
    ``x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε̂``, ``ε̂ = (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t)``.
    Implemented as diffusers' ``DDIMScheduler`` on the respaced chain
    (``trained_betas`` = β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}, ``prediction_type="sample"``,
    ``clip_sample=False``, ``set_alpha_to_one=True``), so its ``t − 1`` is the previous kept
    level. Deterministic: ``noise`` is unused. See :func:`_x0_scheduler_loop` for rounding,
    anchoring and the v2 ``μ`` shift.
    """
    from diffusers import DDIMScheduler

    levels = ddim_timesteps(diffusion.num_timesteps, steps)
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
    return _x0_scheduler_loop(
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
        desc="ddim",
    )


def adjacent_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Levels the original v1 "DDIM" visits: ``list(range(T))[::-1][::T // steps]`` (spec §5.11.2).

    >>> adjacent_timesteps(100, 8)
    [99, 87, 75, 63, 51, 39, 27, 15, 3]
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    return list(range(num_timesteps))[::-1][:: num_timesteps // steps]


@torch.no_grad()
def ddim_adjacent_sample(
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
) -> torch.Tensor:
    """The original v1 pseudo-DDIM (spec §5.11.2, §10.1 item 9), kept for reproduction.

    At each level of :func:`adjacent_timesteps` (``⌊(T−1)/gap⌋ + 1`` model calls, e.g. 9 for
    T=100, steps=8) one DDIM η=0 step to the **adjacent** level ``t−1``
    (:meth:`GaussianDiffusion.ddim_sample` with ``t_prev=None``), rounding at every step
    (``clamp_step`` ignored, as the original), then source anchoring. The result sits at noise
    level ᾱ_{t_last−1}, not at a clean x_0. ``noise`` is unused (η = 0).
    """
    x = x_T
    for step, t in enumerate(
        progress_steps(
            adjacent_timesteps(diffusion.num_timesteps, steps), progress, "ddim-adjacent"
        )
    ):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = diffusion.ddim_sample(
            model, x, tt, t_prev=None, mask=input_mask, x_start=x_start, denoised_fn=denoised_fn
        )
        x = out["sample"]
        if callback is not None:
            callback({"step": step, "t": t, **out})
    return x


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
    :func:`_x0_scheduler_loop`. Deterministic: ``noise`` is unused.
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
    return _x0_scheduler_loop(
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
