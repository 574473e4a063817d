"""Discrete (absorbing-state) diffusion over token ids: the math of the ``discrete`` family.

Reimplements the reparameterized discrete diffusion model (RDM) of Zheng, Yuan, Yu & Kong
2023, "A Reparameterized Discrete Diffusion Model for Text Generation" (arXiv 2302.05737), in
its absorbing-state form, with DiffuSeq's partial noising (only the target span is noised):

* :mod:`~diffuseq.discrete.process`: the forward process ``q(x_t | x_0)`` (each target token
  becomes ``[MASK]`` with probability ``1 − α_t``) and the named ``α`` schedules;
* :mod:`~diffuseq.discrete.losses`: RDM's reweighted cross-entropy on the noisy tokens and the
  vanilla absorbing-diffusion ELBO (D3PM / MDLM weighting) as the alternative;
* :mod:`~diffuseq.discrete.samplers`: RDM's adaptive decoding (top-k routing by confidence,
  re-masking) and the plain ancestral absorbing sampler.

Pure math: the network is passed in; nothing here imports the trainer, the CLIs, the run
store or the decode job. This module itself is torch-free: the command lines read the names
below for their choices.
"""

from __future__ import annotations

__all__ = ["LOSS_NAMES", "SCHEDULE_NAMES"]

#: ``--discrete_schedule``: how the keep probability ``α(u)`` falls from 1 to 0 over
#: ``u = t/T`` (:data:`diffuseq.discrete.process.SCHEDULES`).
SCHEDULE_NAMES: tuple[str, ...] = ("linear", "cosine")

#: ``--discrete_loss``: RDM's reweighted objective or the vanilla ELBO
#: (:data:`diffuseq.discrete.losses.LOSSES`).
LOSS_NAMES: tuple[str, ...] = ("rdm", "elbo")
