"""The interface a model family implements (:mod:`diffuseq.families`).

Generic code never looks inside a family: the trainer asks its :class:`Objective` for the loss
terms of a batch, the decode job asks the family for the tokens of a batch, the run store
saves whatever ``state_dict`` the family's model has, and the evaluator only reads text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffuseq.config import DecodeConfig, RunConfig
    from diffuseq.config.decode import ResolvedDecode
    from diffuseq.sampling.run import RowBatch

__all__ = ["Family", "LossBatch", "Objective", "TimestepObjective"]


@dataclass
class LossBatch:
    """What an objective returns for one (micro-)batch of ``B`` examples.

    Attributes:
        terms: float ``[B]`` tensors (a 0-dim term is broadcast when logged); ``"loss"`` is the
            one optimised, every term is logged (``metrics.jsonl``, TensorBoard, wandb).
        weights: ``[B]`` importance weights: the optimised loss is ``mean(loss · weights)``.
        groups: int64 ``[B]`` in ``0..3`` or ``None``: the bucket each example is also logged
            under (``<term>_q<g>``; the Gaussian family's quartile of ``t``, as the original).
        draws: what the objective drew for the batch (the Gaussian family's ``t [B]``), handed
            back to :meth:`Objective.observe`.
    """

    terms: dict[str, torch.Tensor]
    weights: torch.Tensor
    groups: torch.Tensor | None = None
    draws: Any = None


class Objective(ABC):
    """A family's training objective, with whatever state it adapts while training."""

    @abstractmethod
    def losses(
        self,
        model: Any,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor,
        *,
        text_model: torch.nn.Module,
    ) -> LossBatch:
        """Loss terms of a batch: ``input_ids [B, L]`` (the merged ``x [SEP] y`` layout),
        ``input_mask [B, L]`` (0 = source side, 1 = target side and padding).

        ``model`` is what the forward pass calls (it may be a DDP wrapper); ``text_model`` is
        the unwrapped model (embeddings, read-out, extra parameters).
        """

    def observe(self, batch: LossBatch) -> None:
        """Learn from a training batch's losses (e.g. the loss-aware timestep sampler); called
        once per training micro-batch, outside autocast. Default: nothing."""
        return None

    def before_update(self, step: int, model: torch.nn.Module) -> str | None:
        """Called on every rank before each optimizer update (``step`` = updates done so far):
        adapt what changes with training for the coming updates, so that a checkpoint always
        carries what its weights were trained with (a change made after the last update would
        reach the saved model but not its training) (the Gaussian family's
        ``--adaptive_schedule`` refit; ``model`` is the unwrapped network). Returns a line for
        the training log when something changed. Default: nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs (saved in the training state). Default: nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`. Default: nothing."""
        return None


class TimestepObjective(Objective):
    """An objective that draws a noise level per example from a timestep distribution
    (:mod:`diffuseq.diffusion.timestep_sampling`): a loss-aware one learns from every training
    micro-batch's losses at the drawn levels (``LossBatch.draws``), and its history is part of
    the training state. Subclasses set ``self.timesteps`` and implement :meth:`losses`."""

    timesteps: Any

    def observe(self, batch: LossBatch) -> None:
        update = getattr(self.timesteps, "update_with_local_losses", None)
        if update is not None:  # LossAwareTimesteps
            update(batch.draws, batch.terms["loss"].detach().float())

    def state_dict(self) -> dict[str, Any]:
        return self.timesteps.state_dict() if hasattr(self.timesteps, "state_dict") else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state and hasattr(self.timesteps, "load_state_dict"):
            self.timesteps.load_state_dict(state)


class Family(ABC):
    """One kind of model: how it is built, trained and decoded.

    Every method takes the run's :class:`~diffuseq.config.RunConfig` (or what it built from
    it), so the family reads its own config fields and nothing else needs to know them.
    """

    #: The ``--family`` name (:data:`diffuseq.families.FAMILIES`).
    name: str = ""
    #: Every network call of :meth:`sample_tokens` on a batch has the batch's shape (what
    #: decoding with ``--compile`` needs; not so for autoregressive generation).
    fixed_decode_shapes: bool = True

    @abstractmethod
    def build_model(
        self,
        config: RunConfig,
        *,
        vocab_size: int | None = None,
        encoder_config: Any = None,
        tokenizer: Any = None,
    ) -> torch.nn.Module:
        """The network (``vocab_size`` overrides ``config.model.vocab_size``; ``encoder_config``,
        a ``transformers`` config, replaces the one built from the run config, as a model
        folder's saved config does; ``tokenizer``, the run's, when the caller has it: a family
        may read its special ids, e.g. the pad id its decoded rows end with)."""

    @abstractmethod
    def build_process(self, config: RunConfig) -> Any:
        """The pure math object training and decoding share (the Gaussian family's
        :class:`~diffuseq.diffusion.gaussian.GaussianDiffusion`), or ``None``."""

    @abstractmethod
    def build_objective(self, config: RunConfig, process: Any) -> Objective:
        """The training objective."""

    def sync_process(self, process: Any, model: torch.nn.Module) -> None:
        """Make ``process`` follow what the loaded weights carry (the Gaussian family's
        ``--adaptive_schedule`` betas); called once weights are loaded: training set-up (after
        a resume) and :class:`~diffuseq.decoding.job.Decoder`. Default: nothing."""
        return None

    @abstractmethod
    def resolve_decode(self, config: DecodeConfig, process: Any) -> ResolvedDecode:
        """``config`` resolved for this model (e.g. ``steps`` = T, a sampler row); raises
        :class:`~diffuseq.errors.ConfigError` for a combination the family cannot decode."""

    @abstractmethod
    def sample_tokens(
        self,
        model: torch.nn.Module,
        process: Any,
        rows: RowBatch,
        *,
        config: ResolvedDecode,
        progress: bool = False,
    ) -> torch.Tensor:
        """Decode one batch of rows: int64 tokens ``[B, L]`` on the model's device.

        ``rows`` (:class:`~diffuseq.sampling.run.RowBatch`, on the model's device) holds the
        source (mask 0) and the target span (mask 1, its ids are not to be read); row ``r``
        draws all its randomness from the stream of ``(seeds[r], indices[r])`` so that a row's
        output does not depend on its batch. ``config`` is resolved (:meth:`resolve_decode`).
        """
