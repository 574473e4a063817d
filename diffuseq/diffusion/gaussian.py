"""Gaussian diffusion over word embeddings, DiffuSeq v1 and v2 (docs/original.md §5, golden G1, G4–G6).

Reimplements the math of the original `diffuseq/gaussian_diffusion.py` (`GaussianDiffusion`
and `SpacedDiffusion` of both branches) as one model-agnostic object: float64 coefficient
tables plus closed forms. The network is passed in on every call and never stored.

Notation map (code ↔ DiffuSeq paper, Gong et al., ICLR 2023 ↔ docs/original.md):

==========================  ====================================================
``x_start_mean``            x̄_0 = EMB(w): clean word embeddings of ``input_ids``
``x_start``                 z_0 = x̄_0 + √(1−ᾱ_0)·ε_0, the paper's embedding step q_φ(z_0|w)
``x_t``                     z_t; target span noised, source span kept (partial noising)
``mask`` / ``input_mask``   m: 0 = source side x, 1 = target side y **and padding**
``t``                       0-based index; index t means t+1 forward steps (docs/original.md §0)
``alphas_cumprod``          ᾱ_t = ∏_{s≤t}(1−β_s);  ``alphas_cumprod_prev[t]`` = ᾱ_{t−1}, ᾱ_{−1}=1
``posterior_mean_coef1/2``  coefficients of μ̃_t(z_t, z_0) of q(z_{t−1} | z_t, z_0)
``model_variance``          "fixed-large" Σ_θ: [σ̃²_1, β_1, …, β_{T−1}] (docs/original.md §5.2)
``mean_embed``              μ, the learned mean embedding of DiffuSeq-v2 (optional)
==========================  ====================================================

Paper references are to the DiffuSeq paper (Gong et al., ICLR 2023) §3: "Forward Process with
Partial Noising" and "Reverse Process with Conditional Denoising" (training objective with the
t = 0 term, the rounding term R(‖z_0‖²) and the clamping trick at decoding).

Every per-timestep lookup indexes a float64 table and casts to float32 (:func:`~diffuseq.diffusion.broadcast.extract`), as the
original's ``_extract_into_tensor``; all tensor arithmetic is fp32. The sequence-to-sequence
training loss is the plain function :func:`diffuseq.diffusion.losses.training_losses`
(``training_losses(diffusion, model, input_ids, input_mask, t, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from diffuseq.diffusion.broadcast import as_mask, extract, randn_like_shape, truncate_
from diffuseq.diffusion.respace import respaced_betas, space_timesteps
from diffuseq.diffusion.schedules import get_named_beta_schedule, rescale_noise

__all__ = ["GaussianDiffusion", "DenoisedFn"]

#: ``denoised_fn(f [B,L,h]) -> x̂_0 [B,L,h]`` or ``(x̂_0, tokens [B,L])`` (e.g. rounding).
DenoisedFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def _step_result(
    sample: torch.Tensor, out: dict, mask: torch.Tensor | None, x_start: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Source anchoring ``where(m == 0, x_start, sample)`` and the sampler's result dict."""
    if mask is not None:
        sample = torch.where(as_mask(mask, sample.shape) == 0, x_start, sample)
    result = {"sample": sample, "pred_xstart": out["pred_xstart"]}
    if "tokens" in out:
        result["tokens"] = out["tokens"]
    return result


class GaussianDiffusion:
    """Float64 tables and closed forms of the embedding diffusion (docs/original.md §5.2–§5.11).

    Args:
        betas: float64 ``[K]``. Pass the output of :func:`diffuseq.diffusion.respace.respaced_betas`
            (as :meth:`from_schedule` does) to get the original's `SpacedDiffusion` tables
            bit for bit; raw schedule betas differ by ~1e-16 (derived tables by up to ~1e-13
            relative, within the golden README's rtol=1e-10).
        rescale_timesteps: feed the network ``t_orig·1000/T_orig`` (docs/original.md §5.4), not ``t_orig``.
        timestep_map: int ``[K]``, index of each step in the original process (default: identity).
        original_num_steps: ``T_orig`` used for rescaling (default ``K``).
        denoise: v2 discrete noise: replace positions by μ with a Bernoulli draw (needs μ).
        denoise_rate: v2 scale of that replacement probability.
        reg_rate: v2 weight of ``‖μ‖₂`` in the loss (the original always uses 0.01, docs/original.md §5.9).
        noise_floor: DINOISER's floor F (``--noise_floor``; 0 = the original): training draws
            and the network's time input at decoding stay ≥ ``round(F·T_orig)``.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        rescale_timesteps: bool = True,
        timestep_map: Sequence[int] | np.ndarray | None = None,
        original_num_steps: int | None = None,
        denoise: bool = False,
        denoise_rate: float = 0.2,
        reg_rate: float = 0.01,
        noise_floor: float = 0.0,
    ) -> None:
        betas = np.array(betas, dtype=np.float64)
        K = self.num_timesteps = len(betas) if betas.ndim == 1 else 0
        self.set_betas(betas)
        self.timestep_map = np.array(
            np.arange(K) if timestep_map is None else timestep_map, dtype=np.int64
        )
        if self.timestep_map.shape != (K,):
            raise ValueError(f"timestep_map must have {K} entries, got {self.timestep_map.shape}")
        self.original_num_steps = K if original_num_steps is None else int(original_num_steps)
        self.rescale_timesteps = bool(rescale_timesteps)
        self.denoise = bool(denoise)
        self.denoise_rate = float(denoise_rate)
        self.reg_rate = float(reg_rate)
        self.noise_floor = float(noise_floor)

    def set_betas(self, betas: np.ndarray) -> None:
        """Set β ``[K]`` (0 < β ≤ 1) and recompute every table in place (``--adaptive_schedule``)."""
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not 2 <= len(betas) == self.num_timesteps:
            raise ValueError(f"betas must be a 1-D array of K >= 2 steps, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("every beta must satisfy 0 < beta <= 1")
        # Same numpy expressions, same order as the original (docs/original.md §5.2, G1).
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        one_minus_ab = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_ab
        # σ̃²_0 = 0, so the log is clipped by repeating index 1 (needs K ≥ 2 to be finite).
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1:2], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_ab
        coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / one_minus_ab
        self.posterior_mean_coef2 = coef2
        # Fixed-large reverse variance Σ_θ(z_t, t) = [σ̃²_1, β_1, …, β_{K−1}].
        self.model_variance = np.append(self.posterior_variance[1:2], betas[1:])
        self.model_log_variance = np.log(np.append(self.posterior_variance[1:2], betas[1:]))

    @classmethod
    def from_schedule(
        cls,
        *,
        noise_schedule: str,
        diffusion_steps: int,
        timestep_respacing: str | Sequence[int] = "",
        noise_rescale: float = 0.0,
        **kwargs,
    ) -> GaussianDiffusion:
        """Build the diffusion the original's `create_model_and_diffusion` builds.

        Named schedule (:mod:`diffuseq.diffusion.schedules`; Difformer's :func:`rescale_noise`
        by ``noise_rescale``, 0 = off) → kept steps (:func:`space_timesteps`) → betas rebuilt
        from ᾱ (:func:`respaced_betas`, always, as `SpacedDiffusion` does). ``kwargs`` are the
        remaining constructor arguments."""
        betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
        betas = rescale_noise(betas, noise_rescale)
        kept = space_timesteps(diffusion_steps, timestep_respacing)
        new_betas, timestep_map = respaced_betas(betas, kept)
        return cls(
            betas=new_betas, timestep_map=timestep_map, original_num_steps=diffusion_steps, **kwargs
        )

    # ----------------------------------------------------------------------------------------
    # timesteps
    def scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Value the network receives for index ``t`` [B]: float32 ``[B]`` (docs/original.md §5.4, G4).

        ``timestep_map[t]`` cast to float32 first, then multiplied by the Python float
        ``1000.0 / original_num_steps`` (when ``rescale_timesteps``).
        """
        mapped = torch.from_numpy(self.timestep_map)[t.detach().cpu().long()]
        return self.network_time(mapped.to(t.device))

    def network_time(self, t_orig: torch.Tensor) -> torch.Tensor:
        """Value the network receives for an index ``t_orig`` of the original ``T_orig``-step
        process (any shape): ``float32(t_orig)·(1000/T_orig)`` when ``rescale_timesteps``."""
        mapped = t_orig.float()
        if self.rescale_timesteps:
            return mapped * (1000.0 / self.original_num_steps)
        return mapped

    # ----------------------------------------------------------------------------------------
    # forward process
    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moments of q(z_t | z_0) = N(√ᾱ_t·z_0, (1−ᾱ_t)·I).

        Args:
            x_start: z_0 ``[B,L,h]``; t: int64 ``[B]`` (or ``[1]``, broadcast).

        Returns:
            ``(mean, variance, log_variance)``, each ``[B,L,h]`` float32.
        """
        mean = extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def get_x_start(self, x_start_mean: torch.Tensor, *, noise0: torch.Tensor) -> torch.Tensor:
        """Embedding step z_0 = x̄_0 + √(1−ᾱ_0)·ε_0 (paper §3, q_φ; coefficient in float32).

        Args:
            x_start_mean: x̄_0 = EMB(w) ``[B,L,h]``; noise0: ε_0 ``[B,L,h]``.
        """
        zero = torch.zeros(1, dtype=torch.long, device=x_start_mean.device)
        std = extract(self.sqrt_one_minus_alphas_cumprod, zero, x_start_mean.shape)
        return x_start_mean + std * noise0

    def forward_mask_prob(self, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """v2 forward replacement probability ``denoise_rate·√(1−ᾱ_t)``; ``shape`` = ``[B,L]``."""
        return self.denoise_rate * extract(self.sqrt_one_minus_alphas_cumprod, t, shape)

    def reverse_mask_prob(self, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """v2 sampling replacement probability ``1[t≠0]·exp(½·log Σ_θ(t))·denoise_rate``."""
        nonzero = (t != 0).float().reshape(-1, *([1] * (len(shape) - 1)))
        std = torch.exp(0.5 * extract(self.model_log_variance, t, shape))
        return nonzero * std * self.denoise_rate

    @staticmethod
    def _replace_by_mean(
        x: torch.Tensor,
        mean_embed: torch.Tensor | None,
        probs: Callable[[], torch.Tensor],
        bernoulli_draw: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """v2 discrete noise: positions whose Bernoulli draw ``[B,L]`` is 1 become μ."""
        if mean_embed is None:
            raise ValueError(
                "denoise=True (v2 discrete noise) needs the model's learned mean embedding; "
                "build the model with learned_mean_embed=True or turn denoise off"
            )
        if bernoulli_draw is None:
            bernoulli_draw = torch.bernoulli(probs(), generator=generator)
        replaced = bernoulli_draw.unsqueeze(-1) == 1
        return torch.where(replaced, mean_embed.to(x.dtype).expand_as(x), x)

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        *,
        noise: torch.Tensor,
        mask: torch.Tensor | None = None,
        mean_embed: torch.Tensor | None = None,
        bernoulli_draw: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Partial noising z_t ~ q(z_t | z_0) keeping the source span fixed (paper §3; docs/original.md §5.5).

        1. ``x_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε`` (v2 with μ: ``√ᾱ_t·(z_0−μ) + √(1−ᾱ_t)·ε + μ·m``);
        2. v2 ``denoise``: positions drawn with ``p = denoise_rate·√(1−ᾱ_t)`` become μ;
        3. source positions (``m == 0``) are reset to ``z_0`` itself.

        Args:
            x_start: z_0 ``[B,L,h]``; t: int64 ``[B]``; noise: ε ``[B,L,h]``.
            mask: m ``[B,L]`` or ``[B,L,h]`` (None: every position noised, μ added everywhere).
            mean_embed: μ ``[h]`` or None.
            bernoulli_draw: injected 0/1 draw ``[B,L]`` for step 2 (else drawn from ``generator``).

        Returns:
            z_t ``[B,L,h]``.
        """
        assert noise.shape == x_start.shape
        sqrt_ab = extract(self.sqrt_alphas_cumprod, t, x_start.shape)
        sqrt_1m_ab = extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape)
        m = None if mask is None else as_mask(mask, x_start.shape)
        if mean_embed is None:
            x_t = sqrt_ab * x_start + sqrt_1m_ab * noise
        else:
            shift = mean_embed if m is None else mean_embed * m
            x_t = sqrt_ab * (x_start - mean_embed) + sqrt_1m_ab * noise + shift
        if self.denoise:
            probs = lambda: self.forward_mask_prob(t, x_start.shape[:-1])  # noqa: E731
            x_t = self._replace_by_mean(x_t, mean_embed, probs, bernoulli_draw, generator)
        return x_t if m is None else torch.where(m == 0, x_start, x_t)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moments of q(z_{t−1} | z_t, z_0) = N(coef1_t·z_0 + coef2_t·z_t, σ̃²_t·I).

        Returns:
            ``(mean, variance, log_variance_clipped)``, each ``[B,L,h]`` float32.
        """
        assert x_start.shape == x_t.shape
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = extract(self.posterior_variance, t, x_t.shape)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------------------
    # reverse process
    def p_mean_variance(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        denoised_fn: DenoisedFn | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Reverse step p_θ(z_{t−1} | z_t) with an x_0-predicting network f_θ (paper §3).

        1. ``f = model(z_t, scale_timesteps(t))``;
        2. ``x̂_0 = denoised_fn(f)`` (rounding: the paper's clamping trick), ``clamp(−1, 1)`` if
           ``clip_denoised``;
        3. ``mean = coef1_t·x̂_0 + coef2_t·z_t``; variance from the fixed-large table.

        Args:
            model: called as ``model(x [B,L,h], timesteps float32 [B])``.
            x: z_t ``[B,L,h]``; t: int64 ``[B]``.

        Returns:
            dict with ``mean, variance, log_variance, pred_xstart, model_output`` (``[B,L,h]``)
            and ``tokens`` ``[B,L]`` when ``denoised_fn`` returns them.
        """
        model_output = model(x, self.scale_timesteps(t))
        out = {
            "variance": extract(self.model_variance, t, x.shape),
            "log_variance": extract(self.model_log_variance, t, x.shape),
            "model_output": model_output,
        }
        pred_xstart = model_output
        if denoised_fn is not None:
            result = denoised_fn(model_output)
            if isinstance(result, tuple):
                pred_xstart, out["tokens"] = result
            else:
                pred_xstart = result
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        out["mean"], _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        out["pred_xstart"] = pred_xstart
        return out

    def p_sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        x_start: torch.Tensor | None,
        noise: torch.Tensor | None = None,
        denoised_fn: DenoisedFn | None = None,
        top_p: float | None = None,
        mean_embed: torch.Tensor | None = None,
        bernoulli_draw: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step z_t → z_{t−1} with source anchoring (docs/original.md §5.11.1, §5.11.3).

        ``sample = mean + 1[t≠0]·exp(½·log Σ_θ)·noise``; v2 ``denoise``: positions drawn with
        ``p = 1[t≠0]·exp(½·log Σ_θ)·denoise_rate`` become μ; finally ``where(m==0, x_start, ·)``.

        Args:
            x: z_t ``[B,L,h]``; t: int64 ``[B]``.
            mask: m ``[B,L]`` or ``[B,L,h]`` (None: no anchoring); x_start: anchor ``[B,L,h]``
                (the clean x̄_0 during decoding).
            noise: ``[B,L,h]`` (drawn from ``generator`` if None).
            top_p: the original's ``--top_p``: if > 0, entries with ``|noise| > top_p`` are
                redrawn from ``generator`` (truncated normal, in bounded time: ``truncate_``).
            mean_embed, bernoulli_draw: μ ``[h]`` and an injected 0/1 draw ``[B,L]`` (v2).

        Returns:
            dict with ``sample, pred_xstart, greedy_mean`` (= mean) ``[B,L,h]`` and
            ``tokens`` ``[B,L]`` if the rounding returned them.
        """
        out = self.p_mean_variance(
            model, x, t, denoised_fn=denoised_fn, clip_denoised=clip_denoised
        )
        if noise is None:
            noise = randn_like_shape(x.shape, x, generator)
        if top_p is not None and top_p > 0:
            noise = truncate_(noise.clone(), top_p, generator)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        if self.denoise:
            probs = lambda: self.reverse_mask_prob(t, x.shape[:-1])  # noqa: E731
            sample = self._replace_by_mean(sample, mean_embed, probs, bernoulli_draw, generator)
        result = _step_result(sample, out, mask, x_start)
        result["greedy_mean"] = out["mean"]
        return result

    def ddim_sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        t_prev: torch.Tensor | int | None = None,
        mask: torch.Tensor | None,
        x_start: torch.Tensor | None,
        denoised_fn: DenoisedFn | None = None,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """DDIM step (Song et al., 2021, eq. 12) from level ``t`` to an earlier level.

        ``ε̂ = (√(1/ᾱ_t)·z_t − x̂_0) / √(1/ᾱ_t − 1)``,
        ``σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``,
        ``z_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + 1[t≠0]·σ·noise``, then source anchoring.

        Args:
            t_prev: target level. ``None`` reproduces the original v1 pseudo-DDIM (docs/original.md
                §5.11.2, G4 ``ddim_step_round``): ``ᾱ_prev = alphas_cumprod_prev[t]``, the
                *adjacent* level t−1, whatever stride the caller uses. An int or int64 ``[B]``
                gives a true respaced step: ``ᾱ_prev = ᾱ_{t_prev}``, and 1 where ``t_prev < 0``.
            eta: η; 0 gives the deterministic DDIM update (``noise`` is then unused).
            noise: ``[B,L,h]``, drawn from ``generator`` if None and ``eta != 0``.
            Other arguments as :meth:`p_sample`.

        Returns:
            dict with ``sample, pred_xstart`` ``[B,L,h]`` (and ``tokens`` ``[B,L]``).
        """
        out = self.p_mean_variance(
            model, x, t, denoised_fn=denoised_fn, clip_denoised=clip_denoised
        )
        eps = (
            extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - out["pred_xstart"]
        ) / extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape)
        alpha_bar = extract(self.alphas_cumprod, t, x.shape)
        if t_prev is None:
            alpha_bar_prev = extract(self.alphas_cumprod_prev, t, x.shape)
            nonzero = (t != 0).float()
        else:
            t_prev = torch.as_tensor(t_prev, dtype=torch.long, device=t.device).expand(t.shape)
            ab = np.append(self.alphas_cumprod, 1.0)  # index −1 → ᾱ_{−1} = 1
            alpha_bar_prev = extract(ab, torch.where(t_prev < 0, -1, t_prev), x.shape)
            nonzero = (t_prev >= 0).float()
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
        if eta == 0:
            sample = sample + torch.sqrt(1 - alpha_bar_prev) * eps
        else:
            sigma = (
                eta
                * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
            )
            if noise is None:
                noise = randn_like_shape(x.shape, x, generator)
            nonzero = nonzero.reshape(-1, *([1] * (x.ndim - 1)))
            sample = sample + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
            sample = sample + nonzero * sigma * noise
        return _step_result(sample, out, mask, x_start)
