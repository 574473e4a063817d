"""The autoregressive family (``--family ar``): the baseline the field compares diffusion with.

An encoder-decoder Transformer (:class:`~diffuseq.models.seq2seq.Seq2SeqTransformer`, BART
layers built from scratch; why BART: that module's docstring) trained with token
cross-entropy under teacher forcing and decoded with ``transformers``' ``generate``, by the
same trainer, data folders, tokenizers, decode job and evaluator as the Gaussian family
(issue 22, the DiffuSeq paper's Transformer-base row of Table 1).

Sizing, from the same flags as the Gaussian model (:func:`bart_config`):

======================  ===========================================================
``bert_hidden_size``    ``d_model`` (0: the width of ``--config_name``)
``num_heads``           encoder and decoder attention heads
``intermediate_size``   encoder and decoder feed-forward size
``dropout``             residual/embedding dropout; attention dropout is the BERT config's
``config_name``         the rest: activation (GELU), positions (512), init std (0.02)
``ar_layers``           ``E+D`` layers; ``auto``: the balanced split (``E = D`` or ``D + 1``)
                        whose parameter count is closest to the Gaussian model's of the same
                        flags (:func:`parameter_counts`; both are logged when a model is built)
vocabulary              the tokenizer's; the embedding is tied to the read-out
======================  ===========================================================

``hidden_dim`` and ``hidden_t_dim`` size only the Gaussian model (and so the ``auto`` split);
the diffusion flags are not used. For the paper's sizes (``configs/qqp.yaml``: BERT-base,
``hidden_dim`` 128, 30522 tokens) ``auto`` gives 4+4 layers of width 768, 90.4M parameters
against 91.2M; for the demo (2 layers of 128) 1+1.

Training: per example, the mean over its target tokens (``y… [SEP]``) of ``-log p(token)``
(terms ``loss`` = ``nll``, weights 1, no groups). Decoding (:meth:`ARFamily.resolve_decode`):
``greedy``; ``beam`` (``--step`` = beam width, default ``max(K, 4)``; candidate ``k`` of
``--num_samples K`` is the ``k``-th best beam); ``sample`` (ancestral sampling at temperature 1,
row ``r`` drawing from the generator of ``(seeds[r], indices[r])`` through the Gumbel-max
trick, so a row's text does not depend on its batch); ``auto`` = greedy for one candidate, beam
search for several.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from diffuseq.errors import ConfigError
from diffuseq.families.base import Family, LossBatch, Objective
from diffuseq.models.seq2seq import (
    Seq2SeqTransformer,
    bart_config_from,
    place_targets,
    split_merged,
)
from diffuseq.sampling.table import family_samplers

if TYPE_CHECKING:
    from diffuseq.config import DecodeConfig, ModelConfig, RunConfig
    from diffuseq.config.decode import ResolvedDecode
    from diffuseq.sampling.run import RowBatch

__all__ = [
    "FAMILY",
    "ARFamily",
    "ARObjective",
    "ParameterCounts",
    "bart_config",
    "parameter_counts",
]

DEFAULT_BEAMS = 4

log = logging.getLogger("diffuseq.ar")  # the package logger's child (no runtime import)


# ------------------------------------------------------------------------------ sizing


def bart_config(model: ModelConfig, *, vocab_size: int, layers: tuple[int, int]) -> BartConfig:
    """The ``BartConfig`` of ``layers = (encoder, decoder)`` layers for the run's model flags
    (the mapping: module docstring)."""
    from diffuseq.models.factory import encoder_config

    bert = encoder_config(model)  # sizes resolved as for the Gaussian model (offline)
    config = BartConfig(
        vocab_size=vocab_size,
        d_model=bert.hidden_size,
        encoder_layers=layers[0],
        decoder_layers=layers[1],
        encoder_attention_heads=bert.num_attention_heads,
        decoder_attention_heads=bert.num_attention_heads,
        encoder_ffn_dim=bert.intermediate_size,
        decoder_ffn_dim=bert.intermediate_size,
        activation_function=bert.hidden_act,
        dropout=model.dropout,
        attention_dropout=bert.attention_probs_dropout_prob,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        max_position_embeddings=bert.max_position_embeddings,
        init_std=bert.initializer_range,
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=None,  # no frozen pad row: the ids come from the tokenizer at decode time
        bos_token_id=None,
        eos_token_id=None,
        decoder_start_token_id=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    config._attn_implementation = model.attention
    return config


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of the AR model and of the Gaussian model of the same flags."""

    ar: int
    gaussian: int
    encoder_layers: int
    decoder_layers: int

    @property
    def ratio(self) -> float:
        return self.ar / self.gaussian

    def describe(self) -> str:
        return (
            f"ar model: {self.encoder_layers}+{self.decoder_layers} layers, {self.ar:,} "
            f"parameters; gaussian model of the same flags: {self.gaussian:,} (ratio {self.ratio:.3f})"
        )


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # a tied matrix once


@functools.lru_cache(maxsize=32)
def _counts(model: ModelConfig, vocab_size: int) -> tuple[int, int, int, int]:
    """``(gaussian, base, per encoder layer, per decoder layer)``, built on the meta device
    (no memory, no init): the AR count of ``E+D`` layers is ``base + E·enc + D·dec``."""
    from diffuseq.families.gaussian import FAMILY as GAUSSIAN

    with torch.device("meta"):
        config = _run_config(model, vocab_size)
        gaussian = _count(GAUSSIAN.build_model(config, vocab_size=vocab_size))
        ar = {
            layers: _count(
                BartForConditionalGeneration(
                    bart_config(model, vocab_size=vocab_size, layers=layers)
                )
            )
            for layers in ((1, 1), (2, 1), (1, 2))
        }
    enc, dec = ar[2, 1] - ar[1, 1], ar[1, 2] - ar[1, 1]
    return gaussian, ar[1, 1] - enc - dec, enc, dec


def _run_config(model: ModelConfig, vocab_size: int) -> RunConfig:
    from diffuseq.config import RunConfig

    return RunConfig(model=replace(model, vocab_size=vocab_size, use_plm_init="no"))


def parameter_counts(config: RunConfig, *, vocab_size: int | None = None) -> ParameterCounts:
    """The AR model's parameter count (with its ``--ar_layers`` split) next to the Gaussian
    model's for the same flags, computed without building either model in memory."""
    vocab = vocab_size or config.model.vocab_size
    if vocab <= 0:
        raise ValueError("the vocabulary size is unknown (pass vocab_size)")
    gaussian, base, enc, dec = _counts(config.model, vocab)
    spec = config.model.ar_layers
    if spec != "auto":
        e, d = (int(n) for n in spec.split("+"))
    else:
        candidates = [(n + extra, n) for n in range(1, 64) for extra in (0, 1)]
        e, d = min(candidates, key=lambda ed: abs(base + ed[0] * enc + ed[1] * dec - gaussian))
    return ParameterCounts(
        ar=base + e * enc + d * dec, gaussian=gaussian, encoder_layers=e, decoder_layers=d
    )


# ------------------------------------------------------------------------------ training


class ARObjective(Objective):
    """Teacher-forced token cross-entropy on the target span (source and padding ignored).

    Terms (``[B]``): ``loss`` = ``nll`` = the mean over the example's target tokens
    (``y… [SEP]``) of ``-log p(token | x, y_<t)``; weights 1; no groups.
    """

    def losses(self, model, input_ids, input_mask, *, text_model) -> LossBatch:
        batch = split_merged(input_ids, input_mask)
        hidden = model(batch.src_ids, batch.src_mask, batch.dec_ids, batch.label_mask)  # [B,T,d]
        keep = batch.label_mask
        nll = text_model.token_nll(hidden[keep], batch.labels[keep])  # [N] float32
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(keep.shape[0], dtype=nll.dtype, device=nll.device).index_add_(
            0, rows, nll
        )
        per_example = sums / keep.sum(dim=1).clamp(min=1)  # [B]
        return LossBatch(
            terms={"loss": per_example, "nll": per_example.detach()},
            weights=torch.ones_like(per_example),
        )


# ------------------------------------------------------------------------------ decoding


class RowGumbel(LogitsProcessor):
    """Adds Gumbel noise drawn from each row's own generator: ``argmax(scores + G)`` is a
    sample of ``softmax(scores)`` (the Gumbel-max trick), so greedy search samples and row
    ``r``'s ``i``-th token uses the ``i``-th draw of its generator, whatever its batch."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        draws = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, generator in zip(draws, self.generators):
            row.exponential_(generator=generator)  # E ~ Exp(1): -log E is Gumbel(0, 1)
        return scores.float() - draws.log()


class ARFamily(Family):
    """Autoregressive encoder-decoder baseline (:mod:`diffuseq.families.ar`)."""

    name = "ar"
    fixed_decode_shapes = False  # the target grows by one token per step

    def build_model(self, config, *, vocab_size=None, encoder_config=None, tokenizer=None):
        model = config.model
        unused = [
            flag
            for flag, on in (
                ("--use_plm_init", model.use_plm_init != "no"),
                ("--self_cond", model.self_cond),
                ("--learned_mean_embed", model.learned_mean_embed),
                ("--embedding_norm", model.embedding_norm),
                ("--noise_rescale", config.diffusion.noise_rescale != 0.0),
                ("--anchor_loss", config.diffusion.anchor_loss),
                ("--length_predict", model.length_predict),
                ("--adaptive_schedule", config.diffusion.adaptive_schedule != 0),
            )
            if on
        ]
        if unused:
            raise ConfigError(f"--family ar has no {', '.join(unused)} (a diffusion option)")
        pad = None if tokenizer is None else tokenizer.pad_token_id
        if encoder_config is not None:  # a model folder's saved config
            return Seq2SeqTransformer(bart_config_from(encoder_config), pad_token_id=pad)
        vocab = vocab_size or model.vocab_size
        counts = parameter_counts(config, vocab_size=vocab)
        log.info("%s", counts.describe())
        layers = (counts.encoder_layers, counts.decoder_layers)
        return Seq2SeqTransformer(
            bart_config(model, vocab_size=vocab, layers=layers), pad_token_id=pad
        )

    def build_process(self, config: RunConfig) -> None:
        return None

    def build_objective(self, config: RunConfig, process: Any) -> ARObjective:
        return ARObjective()

    def resolve_decode(self, config: DecodeConfig, process: Any) -> ResolvedDecode:
        """``sampler`` (``auto``: greedy for one candidate, else beam) and ``steps`` (the beam
        width; 1 for greedy and sample) filled in.

        Raises:
            ConfigError: a diffusion sampler or option, or a beam narrower than ``K``.
        """
        sampler, k = config.sampler, config.num_samples
        own = family_samplers(self.name)
        if sampler not in ("auto", *own):
            raise ConfigError(
                f"--sampler {sampler!r} is a diffusion sampler; --family ar decodes with "
                f"auto, {', '.join(own)}"
            )
        checks = [
            (k >= 1, f"--num_samples must be at least 1, got {k}"),
            (config.batch_size >= 1, f"--bsz must be at least 1, got {config.batch_size}"),
            (not (config.top_p is not None and config.top_p > 0), "--family ar has no --top_p"),
            (
                not (config.ddim_adjacent or config.dpm_v2_variant),
                "--ddim_adjacent / --dpm_v2_variant are diffusion options (not --family ar)",
            ),
            (
                config.length_beam == 1,
                "--length_beam is an option of --length_predict diffusion models (not --family ar)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if sampler == "auto":
            sampler = "greedy" if k == 1 else "beam"
        if sampler == "beam":
            steps = config.steps or max(k, DEFAULT_BEAMS)
            if steps < k:
                raise ConfigError(
                    f"--sampler beam: --step (beam width) {steps} < --num_samples {k}"
                )
        elif config.steps not in (None, 1):
            raise ConfigError(f"--sampler {sampler} takes no --step (it is the beam width)")
        else:
            steps = 1
        return config.resolved(sampler, steps)

    def sample_tokens(
        self,
        model: Seq2SeqTransformer,
        process: Any,
        rows: RowBatch,
        *,
        config: ResolvedDecode,
        progress: bool = False,
    ) -> torch.Tensor:
        """:func:`generate_targets` (the function of this family's sampler rows)."""
        return generate_targets(model, rows, config)


@torch.no_grad()
def generate_targets(
    model: Seq2SeqTransformer, rows: RowBatch, config: ResolvedDecode
) -> torch.Tensor:
    """Generate each row's target from its source (``max_new_tokens`` = its target span
    minus the start token) and write ``[CLS] y… [SEP] [PAD]…`` into the span: tokens ``[B, L]``.

    ``config.sampler``: ``greedy``, ``beam`` (``config.steps`` beams; row ``r`` takes beam
    ``seeds[r] − config.seed`` of its example's search) or ``sample`` (Gumbel-max from each
    row's own generator). The function of the AR rows of :mod:`diffuseq.sampling.table`.
    """
    from diffuseq.sampling.inputs import torch_dtype
    from diffuseq.sampling.noise import example_seed

    input_ids, input_mask = rows.input_ids, rows.input_mask
    seeds, indices = rows.seeds, rows.indices
    batch = split_merged(input_ids, input_mask)  # only the source side is read below
    bos, eos = int(batch.bos[0]), int(batch.eos[0])
    if not (bool((batch.bos == bos).all()) and bool((batch.eos == eos).all())):
        raise ValueError("rows of one batch must share their start and end tokens")
    pad = model.pad_token_id if model.pad_token_id is not None else eos
    src_ids, src_mask = batch.src_ids, batch.src_mask
    select = None
    if config.sampler == "beam":  # one search per distinct example; row r takes beam k
        slot = {index: n for n, index in enumerate(dict.fromkeys(indices))}  # first seen
        firsts = [list(indices).index(index) for index in slot]
        src_ids, src_mask = src_ids[firsts], src_mask[firsts]
        k_of = [seed - config.seed for seed in seeds]
        if min(k_of) < 0 or max(k_of) >= config.num_samples:
            raise ValueError("beam rows must have seeds config.seed + k, 0 <= k < num_samples")
        select = [slot[i] * config.num_samples + k for i, k in zip(indices, k_of)]
    processors = LogitsProcessorList()
    if config.sampler == "sample":
        device = input_ids.device
        processors.append(
            RowGumbel(
                [
                    torch.Generator(device=device).manual_seed(example_seed(s, i))
                    for s, i in zip(seeds, indices)
                ]
            )
        )
    beams = config.steps if config.sampler == "beam" else 1
    generation = GenerationConfig(
        max_new_tokens=int(batch.span.max()) - 1,
        do_sample=False,
        num_beams=beams,
        num_return_sequences=config.num_samples if config.sampler == "beam" else 1,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        decoder_start_token_id=bos,
        use_cache=True,
    )
    start = torch.full((src_ids.shape[0], 1), bos, dtype=torch.long, device=src_ids.device)
    with torch.autocast(
        input_ids.device.type, dtype=torch_dtype(config.dtype), enabled=config.dtype != "fp32"
    ):
        generated = model.net.generate(
            input_ids=src_ids,
            attention_mask=src_mask.long(),
            decoder_input_ids=start,
            generation_config=generation,
            logits_processor=processors,
        )  # [B', 1 + n]: [CLS] y… [SEP] [PAD]…
    if select is not None:
        generated = generated[select]
    return place_targets(input_ids, input_mask, generated, pad_token_id=pad)


FAMILY = ARFamily()
