"""DDPM ancestral sampling as the original DiffuSeq decodes (docs/original.md §5.11.1)."""

from __future__ import annotations

import torch

from diffuseq.diffusion.gaussian import DenoisedFn, GaussianDiffusion
from diffuseq.sampling.common import Callback, Model, progress_steps, target_shift
from diffuseq.sampling.noise import NoiseStream

__all__ = ["ancestral_sample"]


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
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as DiffuSeq decodes (docs/original.md §5.11.1, §5.11.3).

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
    x = x_T + target_shift(input_mask, mean_embed, x_T)
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
