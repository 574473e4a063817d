"""Pieces shared by the sampling loops: types, progress bars, source anchoring, rounding.

See :class:`diffuseq.sampling.inputs.SamplerInputs` for the shared sampler signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from diffuseq.diffusion.gaussian import DenoisedFn
from diffuseq.runtime.progress import progress as progress_display

if TYPE_CHECKING:
    from diffuseq.sampling.inputs import SamplerInputs

__all__ = [
    "Callback",
    "Model",
    "anchor_source",
    "progress_steps",
    "target_shift",
    "round_x0",
    "x0_scheduler_loop",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def progress_steps(timesteps: list, progress: bool, desc: str):
    """``timesteps`` with a transient bar on a terminal when ``progress`` (callers pass
    ``rank == 0``); nothing in a file (:func:`diffuseq.runtime.progress.progress`, ``nested``)."""
    return progress_display(timesteps, desc=desc, enabled=progress, nested=True)


def anchor_source(x: torch.Tensor, input_mask: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
    """Source anchoring ``where(m == 0, x_start, x)`` (paper §3: the source x is never noised)."""
    return torch.where(input_mask.unsqueeze(-1) == 0, x_start, x)


def target_shift(
    input_mask: torch.Tensor, mean_embed: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """v2 soft absorbing state ``μ·m`` ``[B,L,h]`` (zero without μ, docs/original.md §5.11.3)."""
    if mean_embed is None:
        return torch.zeros_like(like)
    return mean_embed.to(like.dtype) * input_mask.unsqueeze(-1).to(like.dtype)


def round_x0(
    denoised_fn: DenoisedFn | None, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if denoised_fn is None:
        return x0, None
    out = denoised_fn(x0)
    return out if isinstance(out, tuple) else (out, None)


def x0_scheduler_loop(
    inputs: SamplerInputs,
    scheduler: Any,
    levels: list[int],
    *,
    desc: str,
    step_noise: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Drive a diffusers scheduler with an x_0-predicting model (``prediction_type="sample"``).

    ``levels[j]`` is the diffusion index of ``scheduler.timesteps[j]``. Per step:
    ``x̂_0 = round(f_θ(x, t))`` (if ``t ≥ clamp_step``) with source positions set to
    ``x_start``; ``y ← scheduler.step(x̂_0 − μ·m, ·, y)``; source positions anchored again.
    The ODE runs on ``y = x − μ·m`` so that a v2 model sees the states it was trained on
    (``x_t = √ᾱ_t·(x_0 − μ) + √(1−ᾱ_t)·ε + μ`` on the target side; zero shift without μ).
    A stochastic scheduler gets ``variance_noise = step_noise()`` ``[B,L,h]`` at every step
    (``None``: the scheduler is deterministic and no noise is drawn).
    """
    model, diffusion = inputs.network(), inputs.diffusion
    mask, x_start = inputs.input_mask, inputs.x_start
    shift = target_shift(mask, inputs.mean_embed, inputs.x_T)
    y = inputs.x_T
    for step, (k, t) in enumerate(
        progress_steps(list(zip(scheduler.timesteps.tolist(), levels)), inputs.progress, desc)
    ):
        tt = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        x0, tokens = round_x0(
            inputs.denoised_fn if t >= inputs.clamp_step else None,
            model(y + shift, diffusion.scale_timesteps(tt)),
        )
        x0 = anchor_source(x0, mask, x_start)
        extra = {} if step_noise is None else {"variance_noise": step_noise()}
        y = anchor_source(scheduler.step(x0 - shift, k, y, **extra).prev_sample, mask, x_start)
        if inputs.callback is not None:
            info = {"step": step, "t": t, "sample": y + shift, "pred_xstart": x0}
            inputs.callback(info if tokens is None else {**info, "tokens": tokens})
    return y + shift
