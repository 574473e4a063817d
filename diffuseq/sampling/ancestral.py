"""DDPM ancestral sampling as the original DiffuSeq decodes (docs/original.md §5.11.1)."""

from __future__ import annotations

import torch

from diffuseq.sampling.common import progress_steps, target_shift
from diffuseq.sampling.inputs import SamplerInputs

__all__ = ["ancestral_sample"]


@torch.no_grad()
def ancestral_sample(inputs: SamplerInputs) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as DiffuSeq decodes (docs/original.md §5.11.1, §5.11.3).

    1. v2 with μ: ``x ← x_T + μ·m`` (target and padding positions start around μ).
    2. For ``t = T−1, …, 0`` one :meth:`GaussianDiffusion.p_sample` step:
       ``x̂_0 = round(f_θ(x_t, t))`` if ``t ≥ clamp_step`` (else the raw prediction);
       ``x_{t−1} = μ̃_t(x̂_0, x_t) + 1[t≠0]·√Σ_t·ε`` with fixed-large Σ and
       ``ε = noise.gaussian(top_p)`` (entries with ``|ε| > top_p`` redrawn when ``top_p > 0``);
       v2 ``diffusion.denoise``: positions with ``U < denoise_rate·√Σ_t`` become μ;
       finally the source positions are reset to ``x_start``.

    Reads ``noise`` (required), ``top_p`` (the original's ``--top_p``) and ``mean_embed`` of
    :class:`~diffuseq.sampling.inputs.SamplerInputs`; ``steps`` is not used (all T steps).

    Returns:
        ``x_0 [B,L,h]``; at ``t = 0`` target positions are exactly ``E[rounded tokens]``.
    """
    model, diffusion, noise = inputs.network(), inputs.diffusion, inputs.noise_stream("ancestral")
    mask, mean_embed = inputs.input_mask, inputs.mean_embed
    x = inputs.x_T + target_shift(mask, mean_embed, inputs.x_T)
    T = diffusion.num_timesteps
    for step, t in enumerate(progress_steps(list(range(T))[::-1], inputs.progress, "ancestral")):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = noise.gaussian(top_p=inputs.top_p)
        draw = None
        if diffusion.denoise:
            draw = (noise.uniform() < diffusion.reverse_mask_prob(tt, x.shape[:-1])).to(x.dtype)
        out = diffusion.p_sample(
            model,
            x,
            tt,
            mask=mask,
            x_start=inputs.x_start,
            noise=eps,
            denoised_fn=inputs.denoised_fn if t >= inputs.clamp_step else None,
            mean_embed=mean_embed,
            bernoulli_draw=draw,
        )
        x = out["sample"]
        if inputs.callback is not None:
            inputs.callback({"step": step, "t": t, **out})
    return x
