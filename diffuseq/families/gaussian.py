"""The Gaussian family: DiffuSeq / DiffuSeq-v2, diffusion over word embeddings (the original).

Model: :class:`~diffuseq.models.denoiser.TransformerNetModel` (the original's state-dict keys).
Process: :class:`~diffuseq.diffusion.gaussian.GaussianDiffusion` (with partial noising of the
target span, the v2 soft absorbing state, the ``--noise_floor`` and Difformer's
``--noise_rescale``). Objective: the seq2seq loss terms of
:func:`~diffuseq.diffusion.losses.training_losses` (``--anchor_loss``: plus Difformer's anchor
loss) at ``t`` drawn from the run's timestep distribution (uniform / loss-aware / fixstep),
weighted by its importance weights; ``--length_predict``: the padding kept clean and a length
loss (:mod:`diffuseq.diffusion.length`). Decoding: the registered samplers of
:mod:`diffuseq.sampling` on ``x_T = where(m == 0, EMB(x), z)``, then the top-1 token of the
tied read-out (docs/original.md §5.11–5.13); a length-predicting model decodes
``--length_beam`` lengths per candidate.

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
from diffuseq.errors import ConfigError
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
            ``noise_betas``) in :meth:`before_update`.
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

    def before_update(self, step: int, model: torch.nn.Module) -> str | None:
        if self.adaptive is None:
            return None
        betas = self.adaptive.refit(step, self.diffusion.betas)
        if betas is None:
            return None
        half = self.diffusion.num_timesteps // 2
        before = float(self.diffusion.alphas_cumprod[half])
        self.diffusion.set_betas(betas)
        model.noise_betas.copy_(torch.from_numpy(self.diffusion.betas))
        after = float(self.diffusion.alphas_cumprod[half])
        return (
            f"refitted the noise schedule (--adaptive_schedule, refit {self.adaptive.refits}): "
            f"alpha_bar at t = {half} {before:.4g} -> {after:.4g}"
        )

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
        (``noise_betas``, initially the configured schedule's); with ``--length_predict`` it
        records the tokenizer's pad id."""
        pad = None if tokenizer is None else tokenizer.pad_token_id
        betas = (
            build_diffusion(config.diffusion).betas if config.diffusion.adaptive_schedule else None
        )
        return build_model(
            config.model,
            vocab_size=vocab_size,
            bert_config=encoder_config,
            pad_token_id=pad,
            noise_betas=betas,
        )

    def build_process(self, config: RunConfig) -> GaussianDiffusion:
        return build_diffusion(config.diffusion)

    def build_objective(self, config: RunConfig, process: GaussianDiffusion) -> GaussianObjective:
        """DiffuSeq's loss (with Difformer's anchor loss when ``--anchor_loss``, the length
        loss on the target span when ``--length_predict`` and the schedule refit when
        ``--adaptive_schedule``)."""
        timesteps = build_timestep_distribution(config.diffusion, process)
        options: dict = {}
        if config.diffusion.anchor_loss:
            options["anchor_loss"] = True
        if config.model.length_predict:
            options["length_loss_weight"] = config.diffusion.length_loss_weight
        loss_fn = partial(training_losses, **options) if options else training_losses
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
        ``x_T``, then the sampler's per-step draws; tokens are the top-1 of the fp32 logits.
        A model with a length head (``--length_predict``) decodes ``config.length_beam``
        lengths per row (:func:`_length_beam`)."""
        from diffuseq.sampling.run import sample_x0

        if getattr(model, "length_head", None) is not None:
            return _length_beam(model, process, rows, config=config, progress=progress)
        if config.length_beam > 1:
            raise ConfigError(
                f"--length_beam {config.length_beam} needs a model trained with "
                "--length_predict true; this one has no length head (use --length_beam 1)"
            )
        x0 = sample_x0(model, process, rows, config=config, progress=progress)
        logits = model.get_logits(x0.float())  # [B, L, V], fp32 outside autocast
        return torch.topk(logits, k=1, dim=-1).indices[..., 0]


def _length_beam(
    model: torch.nn.Module,
    process: GaussianDiffusion,
    rows: RowBatch,
    *,
    config: ResolvedDecode,
    progress: bool = False,
) -> torch.Tensor:
    """Tokens ``[B, L]`` of a length-predicting model (:mod:`diffuseq.diffusion.length`).

    1. the ``K = config.length_beam`` most likely lengths ``L_k`` in ``[1, L − len_x]``;
    2. ``K`` copies of each row: mask 1 on ``[len_x, len_x + L_k)``, ``PAD`` ids (so
       ``x̄_0 = EMB(PAD)``, kept clean by every sampler) and mask 0 beyond; copy ``k`` of row
       ``r`` draws from row ``r``'s stream ``(seeds[r], indices[r])``, so a row's output does
       not depend on its batch; all copies go through :func:`sample_x0` in one batch (``K``
       times the model calls);
    3. per row, the copy with the highest mean log-probability of its top-1 tokens over its
       ``L_k`` positions (fp32 logits); ties go to the more probable length. Positions after
       the span read ``PAD``.
    """
    from diffuseq.diffusion.length import length_candidates, length_rows, pick_copies, span_scores
    from diffuseq.sampling.run import RowBatch, sample_x0

    K, pad = config.length_beam, model.pad_token_id
    if pad is None:
        raise ValueError("a --length_predict model needs the tokenizer's pad_token_id to decode")
    device = next(model.parameters()).device
    ids, mask = rows.input_ids.to(device), rows.input_mask.to(device)
    lengths = length_candidates(model.length_logits(ids, mask).float(), mask, K)  # [B, K]
    beam_ids, beam_mask = length_rows(ids, mask, lengths, pad)  # [B·K, L]
    copies = RowBatch(
        beam_ids,
        beam_mask,
        [s for s in rows.seeds for _ in range(K)],
        [i for i in rows.indices for _ in range(K)],
    )
    x0 = sample_x0(model, process, copies, config=config, progress=progress)
    logits = model.get_logits(x0.float())  # [B·K, L, V], fp32 outside autocast
    tokens = torch.topk(logits, k=1, dim=-1).indices[..., 0]  # [B·K, L]
    after = (beam_mask == 0) & (mask.repeat_interleave(K, dim=0) != 0)  # beyond the span
    tokens = torch.where(after, torch.full_like(tokens, pad), tokens)
    return tokens[pick_copies(span_scores(logits, beam_mask), K)]  # [B, L]


FAMILY = GaussianFamily()
