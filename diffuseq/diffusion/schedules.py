"""Named beta schedules of DiffuSeq and DiffuSeq-v2 (docs/original.md §5.1, golden G1).

Reimplements `get_named_beta_schedule`, `betas_for_alpha_bar` and `betas_for_alpha_bar_left`
of the original `diffuseq/gaussian_diffusion.py`. Everything is float64 numpy and uses the
same elementary numpy/math operations in the same order as the original, so the arrays are
bitwise equal to the original's.

Where each schedule comes from:

* ``linear`` — DDPM (Ho et al., 2020), rescaled to ``T`` steps as in improved-diffusion
  (Nichol & Dhariwal, 2021): ``linspace(s·1e-4, s·0.02, T)`` with ``s = 1000/T``.
* ``cosine`` — improved-diffusion's cosine ᾱ(s) = cos²((s+0.008)/1.008 · π/2).
* ``sqrt`` — Diffusion-LM (Li et al., 2022) ᾱ(s) = 1 − √(s + 1e-4); the schedule DiffuSeq
  uses in every published config.
* ``trunc_cos`` — DiffuSeq: cosine with offset 0.1, via the "left" helper (β_0 = 1 − ᾱ(0)).
* ``trunc_lin`` — DiffuSeq: ``linear`` shifted up by 0.01.
* ``pw_lin`` — DiffuSeq: 10 warm steps from ``s·1e-4 + 0.01`` down to ``s·1e-4``, then linear.
* ``warmup-decay`` — DiffuSeq-v2: the ``sqrt`` schedule whose last 10 % of betas are replaced
  by a linear decay from ``β_{T−w}`` to 1e-4 (so ᾱ_{T−1} ≈ 0.03 for T=2000, not pure noise).

The original v2 code only implements ``sqrt`` and ``warmup-decay``; the original v1 code
only the first six. This module offers all seven.

Beyond the original, :func:`rescale_noise` applies Difformer's noise rescaling (Gao et al.
2022, arXiv 2212.09412, "noise rescaling") to any of them (``--noise_rescale F``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "SCHEDULE_NAMES",
    "MAX_BETA",
    "get_named_beta_schedule",
    "betas_for_alpha_bar",
    "betas_for_alpha_bar_left",
    "rescale_noise",
]

#: Largest beta any ᾱ-derived schedule may produce (docs/original.md §11).
MAX_BETA = 0.999


def _linear(T: int) -> np.ndarray:
    scale = 1000 / T
    return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)


def _cosine(T: int) -> np.ndarray:
    return betas_for_alpha_bar(T, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)


def _sqrt(T: int) -> np.ndarray:
    return betas_for_alpha_bar(T, lambda s: 1 - np.sqrt(s + 0.0001))


def _trunc_cos(T: int) -> np.ndarray:
    return betas_for_alpha_bar_left(T, lambda s: np.cos((s + 0.1) / 1.1 * np.pi / 2) ** 2)


def _trunc_lin(T: int) -> np.ndarray:
    scale = 1000 / T
    return np.linspace(scale * 0.0001 + 0.01, scale * 0.02 + 0.01, T, dtype=np.float64)


def _pw_lin(T: int) -> np.ndarray:
    scale = 1000 / T
    beta_start = scale * 0.0001 + 0.01
    beta_mid = scale * 0.0001
    beta_end = scale * 0.02
    warm = np.linspace(beta_start, beta_mid, 10, dtype=np.float64)
    rest = np.linspace(beta_mid, beta_end, T - 10, dtype=np.float64)
    return np.concatenate([warm, rest])


def _warmup_decay(T: int) -> np.ndarray:
    base = _sqrt(T)
    w = max(1, int(0.1 * T))
    decay = np.linspace(base[T - w], 1e-4, w, dtype=np.float64)
    return np.concatenate([base[: T - w], decay])


_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear,
    "cosine": _cosine,
    "sqrt": _sqrt,
    "trunc_cos": _trunc_cos,
    "trunc_lin": _trunc_lin,
    "pw_lin": _pw_lin,
    "warmup-decay": _warmup_decay,
}

#: Every schedule name accepted by :func:`get_named_beta_schedule`.
SCHEDULE_NAMES: tuple[str, ...] = tuple(_SCHEDULES)


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas ``β_0..β_{T−1}`` of a named schedule (docs/original.md §5.1).

    Args:
        name: one of :data:`SCHEDULE_NAMES`.
        num_diffusion_timesteps: ``T``; ``pw_lin`` needs ``T > 10``.

    Returns:
        float64 ``[T]``.

    Raises:
        ValueError: unknown ``name`` (the message lists the choices) or ``T < 1``.
    """
    if name not in _SCHEDULES:
        raise ValueError(
            f"unknown beta schedule: {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}"
        )
    if int(num_diffusion_timesteps) < 1:
        raise ValueError(f"num_diffusion_timesteps must be >= 1, got {num_diffusion_timesteps}")
    if name == "pw_lin" and num_diffusion_timesteps <= 10:
        raise ValueError(f"schedule 'pw_lin' needs > 10 steps, got {num_diffusion_timesteps}")
    return _SCHEDULES[name](int(num_diffusion_timesteps))


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = MAX_BETA
) -> np.ndarray:
    """Discretise a continuous ᾱ(s), s ∈ [0, 1] (docs/original.md §5.1, helper A).

    ``β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)`` for ``i = 0..T−1``.

    Returns:
        float64 ``[T]``.
    """
    T = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.array(betas, dtype=np.float64)


def betas_for_alpha_bar_left(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = MAX_BETA
) -> np.ndarray:
    """The "left" variant used by ``trunc_cos`` (docs/original.md §5.1, helper B).

    ``β_0 = min(1 − ᾱ(0), max_beta)`` and ``β_{i+1} = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)``
    for ``i = 0..T−2`` (the schedule is shifted one step to the right, so the first step
    already removes ``1 − ᾱ(0)`` of the signal).

    Returns:
        float64 ``[T]``.
    """
    T = num_diffusion_timesteps
    betas = [min(1 - alpha_bar(0), max_beta)]
    betas += [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T - 1)]
    return np.array(betas, dtype=np.float64)


def rescale_noise(betas: np.ndarray, factor: float) -> np.ndarray:
    """Difformer's noise rescaling: the schedule whose signal-to-noise ratio is ``SNR_t / F²``.

    With ᾱ_t = ∏_{s≤t}(1−β_s) and ``SNR_t = ᾱ_t / (1−ᾱ_t)``, the rescaled chain has
    ``ᾱ'_t = ᾱ_t / (F² − (F²−1)·ᾱ_t)`` (so ``SNR'_t = SNR_t / F²``) and betas
    ``β'_t = 1 − ᾱ'_t / ᾱ'_{t−1}`` (``ᾱ'_{−1} = 1``). Equivalently, ``z_t`` is the variance-
    preserving normalisation of ``√ᾱ_t·z_0 + F·√(1−ᾱ_t)·ε``: the noise is ``F`` times larger
    relative to the signal at every step. Difformer (Gao et al. 2022, arXiv 2212.09412)
    observes that the usual schedules leave too little noise for learned word embeddings,
    whose norm grows with the embedding dimension, so that the denoiser learns too little; a
    factor ``F > 1`` (its recipes use 4) keeps the training task hard enough. ``F`` is a
    constant of the run (saved with its config), not recomputed from the embeddings' current
    norm: a process that moved while the embeddings grow could not be rebuilt by the decoder
    (with ``--embedding_norm`` every x̄_0 row has norm ≈ √h anyway).

    Rescaling the betas, not the noise draws, is what keeps training and decoding consistent:
    every table of :class:`~diffuseq.diffusion.gaussian.GaussianDiffusion` (q_sample, the
    posterior, the fixed-large variance) and every sampler (ancestral, DDIM, DPM-Solver++,
    which read ``betas`` / ``alphas_cumprod``) then see the same process, with unit-variance
    ε everywhere, and respacing keeps the rescaled ᾱ' at the kept steps.

    >>> rescale_noise(np.array([0.2, 0.5]), 2.0).round(6).tolist()
    [0.5, 0.714286]

    Args:
        betas: float64 ``[T]``; factor: ``F`` (``0`` or ``1``: ``betas`` returned unchanged).

    Returns:
        float64 ``[T]``.
    """
    if factor in (0.0, 1.0):
        return betas
    if factor < 1.0:
        raise ValueError(f"the noise rescaling factor must be 0 (off) or >= 1, got {factor}")
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    f2 = float(factor) ** 2
    rescaled = alphas_cumprod / (f2 - (f2 - 1.0) * alphas_cumprod)
    return 1.0 - rescaled / np.append(1.0, rescaled[:-1])
