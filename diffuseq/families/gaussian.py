"""The Gaussian family: DiffuSeq / DiffuSeq-v2, diffusion over word embeddings (the original).

Model: :class:`~diffuseq.models.denoiser.TransformerNetModel` (the original's state-dict keys).
Process: :class:`~diffuseq.diffusion.gaussian.GaussianDiffusion` (with partial noising of the
target span, the v2 soft absorbing state, the ``--noise_floor`` and Difformer's
``--noise_rescale``). Objective: the seq2seq loss terms of
:func:`~diffuseq.diffusion.losses.training_losses` (``--anchor_loss``: plus Difformer's anchor
loss) at ``t`` drawn from the run's timestep distribution (uniform / loss-aware / fixstep),
weighted by its importance weights. Decoding: the registered samplers of
:mod:`diffuseq.sampling` on ``x_T = where(m == 0, EMB(x), z)``, then the top-1 token of the
tied read-out (docs/original.md §5.11–5.13).

``--adaptive_schedule N`` (SeqDiffuSeq's adaptive noise schedule,
:mod:`diffuseq.diffusion.adaptive_schedule`): the objective keeps a per-``t`` EMA of the
``mse`` term (all-gathered, as the loss-aware sampler's losses) and every ``N`` updates refits
the process's betas in place (training, the objective and ``--eval_decode_interval`` share the
one process) and the model's ``noise_betas`` buffer, which carries them to every checkpoint,
EMA file and model folder; :meth:`GaussianFamily.sync_process` sets a process from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from diffuseq.diffusion.adaptive_schedule import AdaptiveSchedule
from diffuseq.diffusion.losses import training_losses
from diffuseq.diffusion.timestep_sampling import TimestepDistribution, gather_losses
from diffuseq.families.base import Family, LossBatch, TimestepObjective
from diffuseq.models.factory import (
    build_diffusion,
    build_model,
    build_timestep_distribution,
)

if TYPE_CHECKING:
    from diffuseq.config import DecodeConfig, RunConfig
    from diffuseq.config.decode import ResolvedDecode
    from diffuseq.diffusion.gaussian import GaussianDiffusion
    from diffuseq.sampling.run import RowBatch

__all__ = ["FAMILY", "GaussianFamily", "GaussianObjective"]


class GaussianObjective(TimestepObjective):
    """DiffuSeq's loss at ``t ~`` the timestep distribution (docs/original.md §5.6, §6.3).

    Args:
        diffusion: the process (its ``num_timesteps`` also buckets ``t`` into quartiles).
        timesteps: which ``t`` training draws; a loss-aware one learns from :meth:`observe`.
        loss_fn: ``loss_fn(diffusion, model, input_ids, input_mask, t, *, text_model)`` ->
            dict of ``[B]`` terms with ``"loss"`` (default :func:`training_losses`).
        adaptive: ``--adaptive_schedule``'s state (``None``: off): fed the ``mse`` term of
            every micro-batch, it refits ``diffusion``'s betas (and the model's
            ``noise_betas``) in :meth:`after_update`.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        timesteps: TimestepDistribution,
        loss_fn=training_losses,
        adaptive: AdaptiveSchedule | None = None,
    ) -> None:
        self.diffusion, self.timesteps, self.loss_fn = diffusion, timesteps, loss_fn
        self.adaptive = adaptive

    def losses(self, model, input_ids, input_mask, *, text_model) -> LossBatch:
        t, weights = self.timesteps.sample(input_ids.shape[0], device=input_ids.device)
        terms = self.loss_fn(self.diffusion, model, input_ids, input_mask, t, text_model=text_model)
        quartile = torch.div(4 * t, self.diffusion.num_timesteps, rounding_mode="floor")  # [B]
        return LossBatch(terms=terms, weights=weights, groups=quartile, draws=t)

    def observe(self, batch: LossBatch) -> None:
        super().observe(batch)
        if self.adaptive is not None:  # all ranks fold in the same (gathered) losses
            self.adaptive.update(*gather_losses(batch.draws, batch.terms["mse"].detach().float()))

    def after_update(self, step: int, model: torch.nn.Module) -> None:
        if self.adaptive is None:
            return
        betas = self.adaptive.refit(step, self.diffusion.betas)
        if betas is not None:
            self.diffusion.set_betas(betas)
            model.noise_betas.copy_(torch.from_numpy(self.diffusion.betas))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.adaptive is not None:
            state = {**state, "adaptive_schedule": self.adaptive.state_dict()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.adaptive is not None and "adaptive_schedule" in state:
            self.adaptive.load_state_dict(state["adaptive_schedule"])


class GaussianFamily(Family):
    """DiffuSeq v1 / v2 (:mod:`diffuseq.families.gaussian`)."""

    name = "gaussian"

    def build_model(
        self, config: RunConfig, *, vocab_size=None, encoder_config=None, tokenizer=None
    ):
        """The denoiser; with ``--adaptive_schedule`` it carries the process's betas
        (``noise_betas``, initially the configured schedule's)."""
        betas = (
            build_diffusion(config.diffusion).betas if config.diffusion.adaptive_schedule else None
        )
        return build_model(
            config.model, vocab_size=vocab_size, bert_config=encoder_config, noise_betas=betas
        )

    def build_process(self, config: RunConfig) -> GaussianDiffusion:
        return build_diffusion(config.diffusion)

    def build_objective(self, config: RunConfig, process: GaussianDiffusion) -> GaussianObjective:
        """DiffuSeq's loss (with Difformer's anchor loss when ``--anchor_loss``; the schedule
        refit when ``--adaptive_schedule``)."""
        timesteps = build_timestep_distribution(config.diffusion, process)
        loss_fn = (
            partial(training_losses, anchor_loss=True)
            if config.diffusion.anchor_loss
            else training_losses
        )
        interval = config.diffusion.adaptive_schedule
        adaptive = AdaptiveSchedule(process.num_timesteps, interval=interval) if interval else None
        return GaussianObjective(process, timesteps, loss_fn, adaptive)

    def sync_process(self, process: GaussianDiffusion, model: torch.nn.Module) -> None:
        """``--adaptive_schedule``: the process takes the betas the weights carry."""
        betas = getattr(model, "noise_betas", None)
        if betas is not None:
            process.set_betas(betas.detach().cpu().numpy())

    def resolve_decode(self, config: DecodeConfig, process: GaussianDiffusion) -> ResolvedDecode:
        return config.resolve(process.num_timesteps, family=self.name)

    @torch.no_grad()
    def sample_tokens(
        self,
        model: torch.nn.Module,
        process: GaussianDiffusion,
        rows: RowBatch,
        *,
        config: ResolvedDecode,
        progress: bool = False,
    ) -> torch.Tensor:
        """Row ``r`` draws from the generator of ``(seeds[r], indices[r])``: first ``z`` for
        ``x_T``, then the sampler's per-step draws; tokens are the top-1 of the fp32 logits."""
        from diffuseq.sampling.run import sample_x0

        x0 = sample_x0(model, process, rows, config=config, progress=progress)
        logits = model.get_logits(x0.float())  # [B, L, V], fp32 outside autocast
        return torch.topk(logits, k=1, dim=-1).indices[..., 0]


FAMILY = GaussianFamily()
