"""Timestep facts that need no torch: read by the command lines, training and decoding alike.

* :data:`TIMESTEP_DISTRIBUTION_NAMES`: the distributions over ``t`` training may draw from
  (``--schedule_sampler``; built by :mod:`diffuseq.diffusion.timestep_sampling`, keyed by
  exactly these names);
* :func:`noise_floor_step`: the first step ``t_min`` a noise floor allows (``--noise_floor``,
  DINOISER): training draws ``t ≥ t_min`` (:mod:`~diffuseq.diffusion.timestep_sampling`),
  decoding tells the network ``max(t, t_min)`` (:mod:`diffuseq.sampling.noise_floor`).
"""

from __future__ import annotations

__all__ = ["TIMESTEP_DISTRIBUTION_NAMES", "noise_floor_step"]

#: Timestep distributions for training (``--schedule_sampler``).
TIMESTEP_DISTRIBUTION_NAMES: tuple[str, ...] = ("uniform", "lossaware", "fixstep")


def noise_floor_step(noise_floor: float, T: int) -> int:
    """``t_min = round(F·T)``: the first step of the ``T``-step process a noise floor ``F`` allows.

    >>> noise_floor_step(0.25, 2000)
    500
    """
    return int(round(float(noise_floor) * int(T)))
