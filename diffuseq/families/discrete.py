"""The discrete family: reparameterized absorbing-state diffusion (RDM, Zheng et al. 2023).

Model: :class:`~diffuseq.models.token_denoiser.MaskedTokenDenoiser` (DiffuSeq's transformer
body over token ids, an extra ``[MASK]`` row, no timestep input, logits over the vocabulary).
Process: :class:`~diffuseq.discrete.process.AbsorbingDiffusion` with ``T = --diff_steps`` and
``--discrete_schedule``; only the target span is masked (DiffuSeq's partial noising). Objective:
:func:`~diffuseq.discrete.losses.discrete_losses` (``--discrete_loss``: RDM's reweighted
cross-entropy or the vanilla ELBO) at ``t = k + 1``, ``k`` drawn from the run's timestep
distribution (``--schedule_sampler``; uniform by default, loss-aware and fixstep work as for
the Gaussian family). Decoding: ``--sampler auto`` (= ``rdm``), ``rdm`` or ``absorbing``
(:mod:`diffuseq.discrete.samplers`), ``--step`` network calls (default
:data:`DEFAULT_STEPS`), per-row noise streams as the Gaussian samplers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffuseq.diffusion.timestep_sampling import (
    TimestepDistribution,
    create_timestep_distribution,
)
from diffuseq.discrete.losses import discrete_losses
from diffuseq.discrete.process import AbsorbingDiffusion
from diffuseq.errors import ConfigError
from diffuseq.families.base import Family, LossBatch, TimestepObjective
from diffuseq.models.factory import encoder_config as build_encoder_config
from diffuseq.models.token_denoiser import MaskedTokenDenoiser
from diffuseq.sampling.table import family_samplers, get_sampler

if TYPE_CHECKING:
    from diffuseq.config import DecodeConfig, RunConfig
    from diffuseq.config.decode import ResolvedDecode
    from diffuseq.sampling.run import RowBatch

__all__ = ["DEFAULT_STEPS", "FAMILY", "DiscreteFamily", "DiscreteObjective"]

#: ``--step`` when not given: RDM's reported setting (10 iterations).
DEFAULT_STEPS = 10
#: What ``--sampler auto`` means for this family.
DEFAULT_SAMPLER = "rdm"


class DiscreteObjective(TimestepObjective):
    """The discrete loss at ``t = k + 1``, ``k ~`` the timestep distribution over ``0..T−1``.

    Args:
        process: the forward process.
        timesteps: which ``k`` training draws (importance weights; a loss-aware one learns
            from :meth:`observe`).
        loss: ``"rdm"`` or ``"elbo"``.
    """

    def __init__(
        self, process: AbsorbingDiffusion, timesteps: TimestepDistribution, loss: str = "rdm"
    ) -> None:
        self.process, self.timesteps, self.loss = process, timesteps, loss

    def losses(self, model, input_ids, input_mask, *, text_model) -> LossBatch:
        k, weights = self.timesteps.sample(input_ids.shape[0], device=input_ids.device)
        terms = discrete_losses(
            self.process, model, input_ids, input_mask, k + 1, text_model=text_model, loss=self.loss
        )
        quartile = torch.div(4 * k, self.process.num_timesteps, rounding_mode="floor")  # [B]
        return LossBatch(terms=terms, weights=weights, groups=quartile, draws=k)


class _Denoiser:
    """``ids -> logits [B, L, V]`` float32 for the samplers: the body under autocast when
    ``dtype`` is bf16/fp16, the read-out in fp32 (as the Gaussian family's)."""

    def __init__(self, model: MaskedTokenDenoiser, dtype: torch.dtype | None) -> None:
        self.model, self.dtype = model, dtype
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.dtype is None:
            return self.model(ids).float()
        with torch.autocast(ids.device.type, dtype=self.dtype):
            hidden = self.model(ids, read_out=False)
        return self.model.get_logits(hidden.float())


class DiscreteFamily(Family):
    """RDM / absorbing-state diffusion (:mod:`diffuseq.families.discrete`)."""

    name = "discrete"

    def build_model(
        self, config: RunConfig, *, vocab_size=None, encoder_config=None, tokenizer=None
    ):
        m = config.model
        return MaskedTokenDenoiser(
            vocab_size=vocab_size or m.vocab_size,
            hidden_dim=m.hidden_dim,
            hidden_t_dim=m.hidden_t_dim,
            dropout=m.dropout,
            bert_config=encoder_config if encoder_config is not None else build_encoder_config(m),
            init_pretrained=m.use_plm_init,
            config_name=m.config_name,
        )

    def build_process(self, config: RunConfig) -> AbsorbingDiffusion:
        return AbsorbingDiffusion(
            num_timesteps=config.diffusion.diffusion_steps,
            schedule=config.discrete.discrete_schedule,
        )

    def build_objective(self, config: RunConfig, process: AbsorbingDiffusion) -> DiscreteObjective:
        timesteps = create_timestep_distribution(
            config.diffusion.schedule_sampler, process.num_timesteps
        )
        return DiscreteObjective(process, timesteps, loss=config.discrete.discrete_loss)

    def resolve_decode(self, config: DecodeConfig, process: AbsorbingDiffusion) -> ResolvedDecode:
        """``auto`` -> ``rdm``, ``steps`` default :data:`DEFAULT_STEPS` (any number: the
        network is time-independent, the grid is ``k/N``); Gaussian-only options rejected."""
        config = config.validate()
        sampler = DEFAULT_SAMPLER if config.sampler == "auto" else config.sampler
        own = family_samplers(self.name)
        if sampler not in own or config.ddim_adjacent or config.dpm_v2_variant:
            raise ConfigError(
                f"--sampler {sampler} decodes another family; a --family discrete model "
                f"decodes with --sampler auto, {', '.join(own)}"
            )
        if config.top_p > 0 or config.clamp_step != 0 or config.length_beam != 1:
            raise ConfigError(
                "--top_p, --clamp_step and --length_beam are options of the Gaussian samplers; "
                "leave them at their defaults for a --family discrete model"
            )
        steps = DEFAULT_STEPS if config.steps is None else config.steps
        return config.resolved(sampler, steps)

    @torch.no_grad()
    def sample_tokens(
        self,
        model: torch.nn.Module,
        process: AbsorbingDiffusion,
        rows: RowBatch,
        *,
        config: ResolvedDecode,
        progress: bool = False,
    ) -> torch.Tensor:
        """Row ``r`` starts from its source with every target position masked and draws from
        the stream of ``(seeds[r], indices[r])``; ``config.steps`` network calls."""
        from diffuseq.sampling.inputs import torch_dtype
        from diffuseq.sampling.noise import NoiseSource

        input_ids, input_mask = rows.input_ids, rows.input_mask
        mask_id = model.mask_token_id
        x_T = torch.where(input_mask != 0, torch.full_like(input_ids, mask_id), input_ids)
        noise = NoiseSource(
            rows.seeds, rows.indices, shape=(input_ids.shape[1], 1), device=x_T.device
        )
        dtype = None if config.dtype == "fp32" else torch_dtype(config.dtype)
        return get_sampler(config.sampler)(
            _Denoiser(model, dtype),
            x_T,
            input_mask=input_mask,
            mask_token_id=mask_id,
            steps=config.steps,
            schedule=process.schedule,
            noise=noise,
            progress=progress,
        )


FAMILY = DiscreteFamily()
