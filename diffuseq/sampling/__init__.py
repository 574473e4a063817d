"""Sampling loops of DiffuSeq: plain no-grad functions with one shared signature.

``sampler(model, diffusion, x_T, *, input_mask, x_start, denoised_fn, clamp_step, noise,
callback, progress, **specific) -> x_0``

* ``model(x [B,L,h], timesteps float32 [B]) -> x̂_0 [B,L,h]`` (an x_0-predicting network; it may
  be wrapped, e.g. for autocast), ``diffusion`` a :class:`~diffuseq.diffusion.gaussian.GaussianDiffusion`.
* ``x_T [B,L,h]``: start state ``where(m == 0, x_start, z)``, ``z ~ N(0, I)``.
* ``input_mask [B,L]``: 0 = source side (kept equal to ``x_start``), 1 = target and padding.
* ``x_start [B,L,h]``: the anchor, the clean embeddings x̄_0 = EMB(w) (docs/original.md §5.11).
* ``denoised_fn``: rounding to the nearest word embedding (:mod:`diffuseq.sampling.rounding`), applied
  to x̂_0 at levels ``t ≥ clamp_step`` (the original's ``clamp_first=True``).
* ``noise``: a :class:`~diffuseq.sampling.noise.NoiseStream` (per-example generators).
* ``callback(info: dict)`` after every step (keys ``step, t, sample, pred_xstart`` and
  ``tokens`` when rounding ran); the loops never keep the T intermediate states the original
  returns (docs/original.md §5.11: T×B×L×h floats).

Only the final state is returned; the caller turns it into tokens with ``get_logits``.
Options that only some samplers take (``steps``, ``top_p``, ``mean_embed``) are keyword
arguments of those samplers; :func:`run_sampler` passes each sampler the ones it accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from diffuseq.names import SAMPLER_NAMES
from diffuseq.sampling.ancestral import ancestral_sample
from diffuseq.sampling.ddim import ddim_adjacent_sample, ddim_sample
from diffuseq.sampling.dpm_solver import dpm_solver_sample, sde_dpm_solver_sample
from diffuseq.sampling.dpm_v2 import dpm_solver_v2_sample

__all__ = ["SAMPLERS", "get_sampler", "run_sampler"]

#: Decoding algorithm name -> sampler function (the names used in output folder names).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ancestral": ancestral_sample,  # DDPM ancestral, the original's decoder (all T steps)
    "ddim": ddim_sample,  # DDIM η=0 on respaced levels (diffusers' DDIMScheduler)
    "ddim-adjacent": ddim_adjacent_sample,  # the original v1 pseudo-DDIM
    "dpm-solver++": dpm_solver_sample,  # DPM-Solver++(2M) (diffusers' scheduler)
    "dpm-solver++-v2": dpm_solver_v2_sample,  # DiffuSeq-v2's modified solver loop
    "sde-dpm-solver++": sde_dpm_solver_sample,  # its SDE form: fresh noise at every step
}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "diffuseq.names.SAMPLER_NAMES lists the samplers"


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered as ``name``; ``ValueError`` listing the choices otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def run_sampler(name: str, model, diffusion, x_T: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Run sampler ``name`` with the shared arguments plus the options it accepts.

    ``kwargs`` holds the shared keywords (``input_mask, x_start, denoised_fn, clamp_step, noise,
    callback, progress``) and any of ``steps, top_p, mean_embed``; an option the sampler does
    not take is dropped (e.g. ``top_p`` for DDIM, ``steps`` for
    ancestral sampling, which always runs all T steps).
    """
    sampler = get_sampler(name)
    accepted = inspect.signature(sampler).parameters
    return sampler(model, diffusion, x_T, **{k: v for k, v in kwargs.items() if k in accepted})
