"""The absorbing-state forward process over the target span (RDM, Zheng et al. 2023, §2–§3).

Notation (the paper's, with DiffuSeq's partial noising):

* ``x_0 [B, L]``: the merged ``[CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]…`` ids; ``m [B, L]`` is 1
  on the target span (target and padding), 0 on the source;
* ``t ∈ {0, 1, …, T}``: the noise level, ``u = t/T ∈ [0, 1]``;
* ``α_t = α(t/T)``: the probability that a target token is still clean at level ``t``
  (``α_0 = 1``, ``α_T = 0``); the absorbing state is the ``[MASK]`` id;
* ``q(x_{t,n} | x_{0,n}) = α_t·δ(x_{0,n}) + (1 − α_t)·δ([MASK])`` for target positions
  (``m_n = 1``), each independently; source positions are never noised.

The reparameterized backward step (the paper's §3, absorbing case) moves a noisy token to
``x̂_0`` with probability ``λ_{t−1} = (α_{t−1} − α_t)/(1 − α_t)``; already denoised tokens stay
(``λ^{(1)} = 1``). :meth:`AbsorbingDiffusion.elbo_weight` is ``T·λ_{t−1}``,
the weight of the vanilla objective; RDM's own reweighting is
:meth:`AbsorbingDiffusion.rdm_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from diffuseq.discrete import SCHEDULE_NAMES

__all__ = ["SCHEDULES", "AbsorbingDiffusion", "keep_probability"]

#: ``α(u)``, the probability that a token is still clean at ``u = t/T ∈ [0, 1]``; each goes from
#: ``α(0) = 1`` to ``α(1) = 0``.
SCHEDULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # The uniform-rate absorbing schedule of D3PM (Austin et al. 2021: β_t = 1/(T − t + 1),
    # so α_t = 1 − t/T) and RDM's default; MDLM's "loglinear" in the limit of no clipping.
    "linear": lambda u: 1.0 - u,
    # α(u) = cos(πu/2) ≥ 1 − u: more tokens clean than with "linear" at every level; training
    # sees few masks at small u, and decoding (u from 1 to 0) unmasks fewer tokens per step
    # towards the end.
    "cosine": lambda u: np.cos(0.5 * math.pi * u),
}
assert tuple(SCHEDULES) == SCHEDULE_NAMES, "diffuseq.discrete.SCHEDULE_NAMES lists the schedules"


def keep_probability(schedule: str, u: np.ndarray | float) -> np.ndarray:
    """``α(u)`` of the named schedule, float64, exactly 1 at ``u = 0`` and 0 at ``u = 1``.

    Raises:
        ValueError: unknown schedule (the message lists the choices).
    """
    try:
        alpha = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(
            f"unknown discrete schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}"
        ) from None
    u = np.asarray(u, dtype=np.float64)
    out = np.clip(alpha(u), 0.0, 1.0)
    return np.where(u <= 0.0, 1.0, np.where(u >= 1.0, 0.0, out))


class AbsorbingDiffusion:
    """Absorbing-state diffusion with ``T`` levels over the target span.

    Args (keyword-only):
        num_timesteps: ``T`` (training draws ``t ∈ {1..T}``).
        schedule: a name of :data:`SCHEDULES`.

    The absorbing state's id is the network's (its extra ``[MASK]`` row), passed to
    :meth:`q_sample`.
    """

    def __init__(self, *, num_timesteps: int, schedule: str = "linear") -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")
        self.num_timesteps, self.schedule = int(num_timesteps), schedule
        #: ``α_t`` for ``t = 0..T``, float64 ``[T + 1]``.
        self.alphas = keep_probability(schedule, np.arange(self.num_timesteps + 1) / num_timesteps)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``α_t``: int64 ``t [B]`` in ``0..T`` -> float32 ``[B]`` on ``t``'s device."""
        return torch.from_numpy(self.alphas).to(t.device)[t].float()

    def q_sample(
        self,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor,
        t: torch.Tensor,
        *,
        mask_token_id: int,
        uniforms: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x_t ~ q(x_t | x_0)`` with the source kept clean.

        Args:
            input_ids: ``x_0`` int64 ``[B, L]``; input_mask: ``m [B, L]`` (1 = target span).
            t: int64 ``[B]`` in ``0..T``.
            mask_token_id: the absorbing state.
            uniforms: ``U[0, 1)`` draws ``[B, L]`` (default: drawn now from ``generator``, or
                the global RNG); position ``n`` is masked iff ``m_n = 1`` and
                ``uniforms_n < 1 − α_t``.

        Returns:
            ``(x_t int64 [B, L], noisy bool [B, L])``: ``noisy`` marks the masked positions.
        """
        if uniforms is None:
            uniforms = torch.rand(
                input_ids.shape, generator=generator, device=input_ids.device
            )  # [B, L]
        rate = 1.0 - self.alpha(t)  # [B]
        noisy = (input_mask != 0) & (uniforms < rate[:, None])  # [B, L]
        x_t = torch.where(noisy, torch.full_like(input_ids, mask_token_id), input_ids)
        return x_t, noisy

    def elbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``T·λ_{t−1} = T·(α_{t−1} − α_t)/(1 − α_t)``, float32 ``[B]`` for ``t [B]`` in ``1..T``:
        the vanilla (D3PM-absorbing / MDLM) weight of the noisy-token cross-entropy, so that
        ``E_t`` of the weighted loss is the ELBO's (``T/t`` = MDLM's ``1/u`` for ``linear``)."""
        a = torch.from_numpy(self.alphas).to(t.device)  # float64 [T + 1]
        weight = self.num_timesteps * (a[t - 1] - a[t]) / (1.0 - a[t])
        return weight.float()

    def rdm_weight(self, t: torch.Tensor) -> torch.Tensor:
        """RDM's linear reweighting ``λ_{t−1} = 1 − (t − 1)/T`` (Zheng et al. 2023, §4: it
        replaces the ELBO's ``λ_{t−1}``), float32 ``[B]`` for ``t [B]`` in ``1..T``."""
        return 1.0 - (t.float() - 1.0) / self.num_timesteps
