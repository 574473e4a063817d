"""Adaptive noise schedule (beyond the original; SeqDiffuSeq, Yuan et al. 2022, arXiv 2212.10325,
§3.3 "adaptive noise schedule"; ``--adaptive_schedule N``).

SeqDiffuSeq re-fits the schedule while training so that the denoising loss grows linearly
with ``t``: every step then carries the same share of the difficulty (their ablation: −2.29
BLEU on average without it). Theirs is token-level (one schedule per target position); this
one is **sequence-level**: one schedule for every position, fitted to the per-example loss.

Notation (code ↔ paper):

===================  ==========================================================================
``alphas_cumprod``   ᾱ_t, ``t = 0..T−1`` (the process's 0-based indices)
``losses``           ℓ_t: per-``t`` EMA of the ``mse`` term (the x_0-prediction error
                     ``mean_{L,h}(z_0 − f_θ(z_t, t))²``, the t = 0 term at ``t = 0``)
``monotone``         m_t: ℓ made non-decreasing in ``t`` (isotonic least squares, PAVA)
``target``           ℓ*_t = m_0 + (m_{T−1} − m_0)·t/(T−1)
``positions``        s_t ∈ [0, T−1]: where the piecewise-linear m(s) equals ℓ*_t
===================  ==========================================================================

The refit (:func:`refit_betas`): log ᾱ'_t = interp(s_t; 0..T−1, log ᾱ), so ᾱ'_0 = ᾱ_0 and
ᾱ'_{T−1} = ᾱ_{T−1} (the end points stay), then β'_t = 1 − ᾱ'_t/ᾱ'_{t−1} clipped to
``[MIN_BETA, MAX_BETA]`` (the schedules' 0.999 cap). Only the ``mse`` term is fitted: the
other terms (``decoder_nll``, ``tT_loss``) do not depend on ``t``. Everything is float64 numpy
and deterministic; a flat, decreasing or non-finite loss curve leaves the schedule unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["EMA_DECAY", "MAX_BETA", "MIN_BETA", "AdaptiveSchedule", "isotonic", "refit_betas"]

#: Decay of the per-timestep loss EMA (each new loss at ``t`` moves ℓ_t by 10 %).
EMA_DECAY = 0.9
#: The schedules' upper clip of β (:mod:`diffuseq.diffusion.schedules`).
MAX_BETA = 0.999
#: Lower clip of a refitted β: keeps ᾱ' strictly decreasing (every β > 0).
MIN_BETA = 1e-10


def isotonic(values: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit (pool adjacent violators), float64 ``[T]`` -> ``[T]``.

    Example:
        >>> isotonic(np.array([1.0, 3.0, 2.0, 4.0])).tolist()
        [1.0, 2.5, 2.5, 4.0]
    """
    means: list[float] = []
    sizes: list[int] = []
    for value in np.asarray(values, dtype=np.float64):
        means.append(float(value))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            size = sizes[-2] + sizes[-1]
            means[-2] = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / size
            sizes[-2] = size
            means.pop()
            sizes.pop()
    return np.repeat(np.array(means), sizes)


def _inverse_positions(monotone: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``s_t`` with m(s_t) = ℓ*_t for the piecewise-linear non-decreasing m; a run of equal
    values (a plateau of the isotonic fit) counts as one knot at its middle index, except at
    the ends, which map to 0 and T−1. Returns float64 ``[T]``, non-decreasing."""
    T = len(monotone)
    values, first, counts = np.unique(monotone, return_index=True, return_counts=True)
    middle = first + (counts - 1) / 2.0
    positions = np.interp(target, values, middle)
    positions[0], positions[-1] = 0.0, T - 1.0
    return positions


def refit_betas(
    betas: np.ndarray, losses: np.ndarray, *, rtol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray] | None:
    """The schedule under which the loss would grow linearly in ``t`` (module docstring).

    Args:
        betas: β_t float64 ``[T]`` of the current process (``T ≥ 2``).
        losses: ℓ_t float64 ``[T]`` measured under ``betas``.
        rtol: a curve whose monotone fit rises by at most ``rtol·max|m|`` is flat.

    Returns:
        ``(new_betas [T], expected_losses [T])``, ``expected_losses`` = ℓ*_t (what ℓ should
        read at ``t`` under the new schedule), or ``None``: the curve is flat, decreasing or
        not finite (keep the schedule).
    """
    betas = np.asarray(betas, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    T = len(betas)
    assert losses.shape == (T,) and T >= 2, (losses.shape, T)
    if not np.isfinite(losses).all():
        return None
    monotone = isotonic(losses)
    rise = monotone[-1] - monotone[0]
    if not rise > rtol * max(np.abs(monotone).max(), np.finfo(np.float64).tiny):
        return None
    target = monotone[0] + rise * np.arange(T) / (T - 1)  # ℓ*_t  [T]
    positions = _inverse_positions(monotone, target)  # s_t  [T]
    log_alpha_bar = np.cumsum(np.log(1.0 - betas))  # log ᾱ_t  [T], strictly decreasing
    new_log = np.interp(positions, np.arange(T), log_alpha_bar)  # log ᾱ'_t  [T]
    new_betas = 1.0 - np.exp(np.diff(new_log, prepend=0.0))  # β'_t = 1 − ᾱ'_t/ᾱ'_{t−1}
    return np.clip(new_betas, MIN_BETA, MAX_BETA), target


class AdaptiveSchedule:
    """The training-time state of the refit: a per-timestep loss EMA and when to refit.

    Args:
        num_timesteps: ``T`` of the process.
        interval: refit every ``interval`` optimizer updates (``--adaptive_schedule N``), once
            every ``t`` has been seen at least once.
        decay: the EMA decay (:data:`EMA_DECAY`).
    """

    def __init__(self, num_timesteps: int, *, interval: int, decay: float = EMA_DECAY) -> None:
        if interval <= 0:
            raise ValueError(f"the refit interval must be positive, got {interval}")
        self.interval, self.decay = int(interval), float(decay)
        self.losses = np.zeros([int(num_timesteps)], dtype=np.float64)  # ℓ_t  [T]
        self.counts = np.zeros([int(num_timesteps)], dtype=np.int64)  # losses seen at t  [T]
        self.refits = 0  # refits that changed the schedule

    def update(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Fold per-example losses in, in order: ``ℓ_t ← d·ℓ_t + (1−d)·x`` (the first one at
        ``t`` sets ℓ_t); the same calls on every rank (all-gathered losses)."""
        for t, loss in zip(ts, losses):
            t = int(t)
            if self.counts[t] == 0:
                self.losses[t] = float(loss)
            else:
                self.losses[t] = self.decay * self.losses[t] + (1.0 - self.decay) * float(loss)
            self.counts[t] += 1

    def refit(self, step: int, betas: np.ndarray) -> np.ndarray | None:
        """New betas ``[T]`` for the updates after the first ``step`` ones (called before
        update ``step + 1``, so a checkpoint never holds a schedule its weights were not
        trained with) when one is due, every ``t``
        has been seen and the curve is not degenerate, else ``None``. On a refit the EMA is
        moved to the new axis: ℓ_t ← ℓ*_t, what the loss at ``t`` should read now."""
        if step % self.interval != 0 or not (self.counts > 0).all():
            return None
        fitted = refit_betas(betas, self.losses)
        if fitted is None:
            return None
        new_betas, self.losses = fitted
        self.refits += 1
        return new_betas

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs (tensors, so ``torch.save`` handles it)."""
        return {
            "losses": torch.from_numpy(self.losses.copy()),
            "counts": torch.from_numpy(self.counts.copy()),
            "refits": self.refits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        losses = np.asarray(state["losses"], dtype=np.float64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        if losses.shape != self.losses.shape or counts.shape != self.counts.shape:
            raise ValueError(
                f"adaptive schedule state has {losses.shape[0]} steps, the process {len(self.losses)}"
            )
        self.losses, self.counts = losses.copy(), counts.copy()
        self.refits = int(state.get("refits", 0))
