"""Decoding of the discrete family: RDM's adaptive decoding and the ancestral absorbing sampler.

Both are plain no-grad functions with one signature::

    sampler(denoise, x_T, *, input_mask, mask_token_id, steps, schedule, noise,
            callback=None, progress=False, **options) -> tokens int64 [B, L]

* ``denoise(x [B, L] int64) -> logits [B, L, V]`` (float32): the network's prediction of
  ``x_0`` from a partially masked sequence (it may be wrapped, e.g. for autocast);
* ``x_T [B, L]``: the source ids with every target position (``input_mask == 1``) set to
  ``mask_token_id``; source positions are never changed;
* ``steps``: ``N`` network calls, one per level of the grid ``u_k = k/N`` (``k = N..1``),
  moving from ``u_k`` to ``u_{k−1}`` with the keep probability ``α`` of ``schedule``; after the
  last step (``u_0 = 0``, ``α = 1``) every target position holds a token;
* ``noise``: a :class:`~diffuseq.sampling.noise.NoiseStream`; every step draws a fixed number of
  ``uniform() [B, L]`` per row (whatever the state), so a row's output depends only on its own
  stream: a row alone equals the row in a batch, and candidate ``k`` (seed ``S + k``) equals a
  run with seed ``S + k``;
* ``callback(info)`` after every step: ``step``, ``level`` (``u_k``), ``tokens`` ``[B, L]``.

RDM's decoding (Zheng et al. 2023, §4): after each step the number of clean target tokens is
what the schedule says for the next level; which ones is routed by the model's confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffuseq.discrete.process import keep_probability
from diffuseq.runtime.progress import progress as progress_display

__all__ = ["absorbing_sample", "rdm_sample"]

Denoise = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None] | None


def _levels(steps: int, schedule: str) -> list[tuple[int, float, float, float]]:
    """``(k, u_k, α(u_k), α(u_{k−1}))`` for ``k = N..1``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    u = [k / steps for k in range(steps + 1)]
    alpha = keep_probability(schedule, u).tolist()
    return [(k, u[k], alpha[k], alpha[k - 1]) for k in range(steps, 0, -1)]


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel draws from ``U[0, 1)`` ones (clamped away from 0)."""
    tiny = torch.finfo(uniform.dtype).tiny
    exponential = -torch.log(uniform.clamp_min(tiny))  # Exp(1) draws, > 0
    return -torch.log(exponential.clamp_min(tiny))


@torch.no_grad()
def rdm_sample(
    denoise: Denoise,
    x_T: torch.Tensor,
    *,
    input_mask: torch.Tensor,
    mask_token_id: int,
    steps: int,
    schedule: str,
    noise,
    routing_temperature: float = 1.0,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """RDM's adaptive decoding with top-k routing and re-masking.

    Each step ``k`` (from level ``u_k`` to ``u_{k−1}``):

    1. ``logits = denoise(x)``; ``x̂_0 = argmax``, confidence ``c = max log-softmax`` ``[B, L]``;
    2. every masked target position takes ``x̂_0`` and its score becomes ``c``; a position
       that was already clean keeps its token and the score it was decoded with (the network
       is trained on noisy positions only, so its output at clean ones is not a score);
    3. routing: ``n = round((1 − α(u_{k−1}))·Σm)`` target positions are masked again, those
       with the lowest ``score + τ·u_k·g`` (``g`` a Gumbel draw per position, from one
       ``uniform()``): all target tokens compete, so a token decoded early with low confidence
       can be re-masked when more confident predictions appear (RDM's unconditional routing);
       ``τ = routing_temperature`` (0 = deterministic top-k), annealed with the level so that
       the last steps route by confidence alone. Gumbel-perturbed top-k keeps a sample without
       replacement with probabilities ``∝ exp(c/(τ·u_k))``.

    Args:
        routing_temperature: ``τ ≥ 0`` (module docstring for the others).

    Returns:
        int64 ``[B, L]``: the source ids and a token at every target position.
    """
    target = input_mask != 0  # [B, L]
    span = target.sum(dim=-1, keepdim=True).float()  # Σ m [B, 1]
    x = x_T.clone()
    scores = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [B, L]
    for k, level, _, alpha_next in progress_display(
        _levels(steps, schedule), desc="rdm", enabled=progress, nested=True
    ):
        logp = torch.log_softmax(denoise(x).float(), dim=-1)  # [B, L, V]
        confidence, prediction = logp.max(dim=-1)  # [B, L]
        masked = target & (x == mask_token_id)
        x = torch.where(masked, prediction, x)
        scores = torch.where(masked, confidence, scores)
        uniform = noise.uniform().to(x.device)  # [B, L], drawn at every step
        ranked = scores + (routing_temperature * level) * _gumbel(uniform.float())
        ranked = ranked.masked_fill(~target, float("inf"))  # never re-mask the source
        remask_count = torch.floor((1.0 - alpha_next) * span + 0.5)  # [B, 1]
        order = torch.argsort(ranked, dim=-1, stable=True)  # lowest first
        rank = torch.argsort(order, dim=-1)  # position -> its place in that order
        remask = rank < remask_count  # [B, L], only target positions
        x = torch.where(remask, torch.full_like(x, mask_token_id), x)
        if callback is not None:
            callback({"step": k, "level": level, "tokens": x})
    return x


@torch.no_grad()
def absorbing_sample(
    denoise: Denoise,
    x_T: torch.Tensor,
    *,
    input_mask: torch.Tensor,
    mask_token_id: int,
    steps: int,
    schedule: str,
    noise,
    temperature: float = 1.0,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """The ancestral sampler of absorbing diffusion (D3PM-absorbing; RDM's random routing).

    Each step ``k`` (from ``u_k`` to ``u_{k−1}``), with ``α_k = α(u_k)``:

    1. ``logits = denoise(x)``; a token ``x̂_0 ~ softmax(logits/temperature)`` per position,
       by inverse CDF from one ``uniform()`` (``temperature = 0``: argmax);
    2. each masked target position becomes ``x̂_0`` with probability
       ``(α_{k−1} − α_k)/(1 − α_k)`` (a second ``uniform()``; drawn first), else stays masked;
       clean tokens are final (1 at the last step, where ``α_0 = 1``).

    Returns:
        int64 ``[B, L]``: the source ids and a token at every target position.
    """
    target = input_mask != 0
    x = x_T.clone()
    for k, level, alpha, alpha_next in progress_display(
        _levels(steps, schedule), desc="absorbing", enabled=progress, nested=True
    ):
        logits = denoise(x).float()  # [B, L, V]
        route = noise.uniform().to(x.device)  # [B, L]
        pick = noise.uniform().to(x.device)  # [B, L]
        if temperature > 0:
            cdf = torch.softmax(logits / temperature, dim=-1).cumsum(dim=-1)  # [B, L, V]
            threshold = (pick.float() * cdf[..., -1]).unsqueeze(-1)  # [B, L, 1]
            sampled = torch.searchsorted(cdf, threshold, right=True).squeeze(-1)
            sampled = sampled.clamp_max(logits.shape[-1] - 1)
        else:
            sampled = logits.argmax(dim=-1)
        unmask_probability = 1.0 if alpha_next >= 1.0 else (alpha_next - alpha) / (1.0 - alpha)
        unmask = target & (x == mask_token_id) & (route < unmask_probability)
        x = torch.where(unmask, sampled, x)
        if callback is not None:
            callback({"step": k, "level": level, "tokens": x})
    return x
