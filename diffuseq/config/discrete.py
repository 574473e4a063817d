"""The run-config section of the discrete family (``discrete:`` in ``config.yaml``).

Read only by :mod:`diffuseq.families.discrete`. The family also reads ``--diff_steps`` (``T``:
training draws ``t ∈ {1..T}``) and ``--schedule_sampler`` (which ``t``; the loss-aware one
works as for the Gaussian family); the options that only the Gaussian process has are
rejected with ``--family discrete`` (:func:`discrete_checks`). Field names carry the
``discrete_`` prefix because flags are one flat namespace across sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffuseq.config.fields import opt

if TYPE_CHECKING:
    from diffuseq.config.run import RunConfig

__all__ = ["DiscreteConfig", "discrete_checks"]


def _schedules() -> tuple[str, ...]:
    from diffuseq.discrete import SCHEDULE_NAMES

    return SCHEDULE_NAMES


def _losses() -> tuple[str, ...]:
    from diffuseq.discrete import LOSS_NAMES

    return LOSS_NAMES


@dataclass(frozen=True)
class DiscreteConfig:
    """Absorbing-state diffusion of the ``discrete`` family (RDM, Zheng et al. 2023)."""

    discrete_schedule: str = opt(
        "linear",
        "--family discrete: keep probability α(t/T) of a target token at level t: linear "
        "(α = 1 − t/T) or cosine (α = cos(π/2·t/T)); decoding uses the same schedule",
        choices=_schedules,
    )
    discrete_loss: str = opt(
        "rdm",
        "--family discrete: training loss: rdm = RDM's reweighted cross-entropy on the masked "
        "tokens (λ_t = 1 − (t−1)/T), elbo = the vanilla absorbing-diffusion ELBO "
        "(D3PM / MDLM weights, T/t for the linear schedule)",
        choices=_losses,
    )


def discrete_checks(config: RunConfig) -> list[tuple[bool, str]]:
    """``(ok, message)`` checks of the options the discrete family cannot honour (none for
    another family)."""
    if config.model.family != "discrete":
        return []
    m, d = config.model, config.diffusion
    gaussian_only = [
        ("--self_cond", m.self_cond),
        ("--learned_mean_embed", m.learned_mean_embed),
        ("--denoise", d.denoise),
        ("--noise_floor", d.noise_floor != 0.0),
        ("--embedding_norm", m.embedding_norm),
        ("--noise_rescale", d.noise_rescale != 0.0),
        ("--anchor_loss", d.anchor_loss),
        ("--length_predict", m.length_predict),
        ("--adaptive_schedule", d.adaptive_schedule != 0),
        ("--timestep_respacing", bool(d.timestep_respacing)),
    ]
    return [
        (
            not given,
            f"{flag} is an option of the Gaussian family; --family discrete has no such "
            "option (leave it at its default)",
        )
        for flag, given in gaussian_only
    ]
