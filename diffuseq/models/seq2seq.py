"""The autoregressive baseline's network: an encoder-decoder Transformer built from scratch.

The DiffuSeq paper (Gong et al. 2023, Table 1) compares with an autoregressive Transformer-base
(Vaswani et al. 2017); this module is that baseline for the toolkit (issue 22), built from a
Hugging Face ``BartConfig`` with random weights (nothing is downloaded).

Why BART's layers (and not T5's): they are the Gaussian family's building blocks (BERT, the
denoiser of docs/original.md §4): learned absolute positions, a LayerNorm on the embeddings,
post-LN residual blocks with biases, GELU, init N(0, 0.02). So the comparison changes the
modelling (left-to-right factorisation vs. diffusion), not the kind of layer. T5 differs in all
of these (relative position buckets, pre-LN RMSNorm without biases, no embedding norm, an
untied 1/sqrt(d) read-out). BART also is Transformer-base's post-LN layout, plus the embedding
LayerNorm.

The merged layout of :mod:`diffuseq.data.dataset` (``[CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]…``,
mask 0 on the source) is turned into encoder and decoder inputs by :func:`split_merged`, for a
whole batch at once (gathers, no loop over examples). Teacher forcing: the decoder reads
``[CLS] y`` and predicts ``y [SEP]``; the target's ``[CLS]`` is the decoder's start token, so
generation starts from it and writes ``[CLS] y [SEP]`` back into the target span, the layout a
diffusion model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

from diffuseq.errors import CheckpointError, first_sentence
from diffuseq.ops.linear_cross_entropy import linear_cross_entropy

__all__ = ["Seq2SeqBatch", "Seq2SeqTransformer", "bart_config_from", "split_merged"]


# ------------------------------------------------------------------------------ the layout


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A merged batch split into encoder and decoder inputs (all ``[B, ·]``).

    Attributes:
        src_ids, src_mask: the source span (mask-0 positions, ``[CLS] x [SEP] [SEP]``),
            left-aligned, ``[B, S]`` with ``S = max len_x``, padded with the end token;
            ``src_mask`` True on the source's tokens (no target id is in ``src_ids``).
        dec_ids: decoder inputs ``[B, T-1]``: the target span shifted right (``[CLS] y…``).
        labels: ``[B, T-1]``: the next token at each decoder position (``y… [SEP]``).
        label_mask: True where a label counts: up to and including the target's end token
            (its first ``[SEP]``/``[END]``), never on padding.
        len_x: source positions per row ``[B]``; span: target-span length ``L - len_x``.
        bos, eos: the start token (``input_ids[:, 0]``) and the end token (the source's, at
            ``len_x - 2``; every target ends with the same), ``[B]``.
    """

    src_ids: torch.Tensor
    src_mask: torch.Tensor
    dec_ids: torch.Tensor
    labels: torch.Tensor
    label_mask: torch.Tensor
    len_x: torch.Tensor
    span: torch.Tensor
    bos: torch.Tensor
    eos: torch.Tensor


def split_merged(input_ids: torch.Tensor, input_mask: torch.Tensor) -> Seq2SeqBatch:
    """Encoder/decoder inputs and labels of merged rows ``input_ids``/``input_mask [B, L]``.

    The target span of row ``b`` starts at ``len_x[b] = L - Σ mask``; it is gathered into
    row-aligned ``[B, T]`` (``T = max(L - len_x)``). Its end is its first end token after the
    ``[CLS]`` (``merge_example`` ends every target with the source's end token); what follows
    is padding, ignored by the labels. The target's ids are read only here (training).
    """
    B, L = input_ids.shape
    device = input_ids.device
    len_x = L - input_mask.long().sum(dim=1)  # [B]
    S = int(len_x.max())
    src_mask = torch.arange(S, device=device)[None, :] < len_x[:, None]  # [B, S]
    bos = input_ids[:, 0]
    eos = input_ids.gather(1, (len_x - 2).clamp(min=0)[:, None])[:, 0]  # [B]
    # the source span starts every row; a shorter one is padded with its end token (masked)
    src_ids = torch.where(src_mask, input_ids[:, :S], eos[:, None])
    span = L - len_x
    T = int(span.max())
    offsets = torch.arange(T, device=device)[None, :]  # [1, T]
    pos = len_x[:, None] + offsets  # [B, T]
    in_span = pos < L
    target = input_ids.gather(1, pos.clamp(max=L - 1))
    target = torch.where(in_span, target, eos[:, None])  # [B, T]
    is_end = (target == eos[:, None]) & (offsets >= 1) & in_span
    first_end = torch.where(is_end.any(dim=1), is_end.long().argmax(dim=1), span - 1)  # [B]
    tokens = offsets <= first_end[:, None]  # [B, T]: [CLS] y… [SEP]
    return Seq2SeqBatch(
        src_ids=src_ids,
        src_mask=src_mask,
        dec_ids=target[:, :-1],
        labels=target[:, 1:],
        label_mask=tokens[:, 1:],
        len_x=len_x,
        span=span,
        bos=bos,
        eos=eos,
    )


def place_targets(
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    generated: torch.Tensor,
    *,
    pad_token_id: int,
) -> torch.Tensor:
    """Merged rows ``[B, L]``: the source span of ``input_ids``, then ``generated [B, G]``
    (``[CLS] y… [SEP] [PAD]…``) written from ``len_x`` on and cut at ``L``; the rest padding."""
    B, L = input_ids.shape
    len_x = L - input_mask.long().sum(dim=1)
    out = torch.where(input_mask.bool(), torch.full_like(input_ids, pad_token_id), input_ids)
    pos = len_x[:, None] + torch.arange(generated.shape[1], device=input_ids.device)[None, :]
    keep = pos < L
    rows = torch.arange(B, device=input_ids.device)[:, None].expand_as(pos)
    out[rows[keep], pos[keep]] = generated.to(out.dtype)[keep]
    return out


# ------------------------------------------------------------------------------ the model


def bart_config_from(saved) -> BartConfig:
    """A ``BartConfig`` from a saved one (a model folder's ``encoder`` entry, which
    :class:`~diffuseq.store.hf_folder.ModelFolder` reads back as a ``BertConfig``): its BART
    fields are kept, the generation defaults are cleared."""
    if isinstance(saved, BartConfig):
        config = BartConfig.from_dict(saved.to_dict())
    else:
        fields = set(BartConfig().to_dict())
        config = BartConfig(**{k: v for k, v in saved.to_dict().items() if k in fields})
    config.forced_eos_token_id = config.forced_bos_token_id = None
    attn = getattr(saved, "_attn_implementation", None)
    config._attn_implementation = attn or "sdpa"
    return config


class Seq2SeqTransformer(nn.Module):
    """``BartForConditionalGeneration`` (as ``net``) with tied input/output embeddings, read
    out through :func:`~diffuseq.ops.linear_cross_entropy.linear_cross_entropy` for training.

    ``state_dict()`` holds the tied matrix once (``net.model.shared.weight``; its aliases
    ``embed_tokens`` and ``lm_head`` are dropped), so every entry is a parameter or a buffer and
    the trainer's EMA files hold the EMA of every entry; ``load_state_dict`` restores the
    aliases. ``pad_token_id`` (the tokenizer's, when known) pads decoded rows.
    """

    def __init__(self, config: BartConfig, *, pad_token_id: int | None = None) -> None:
        super().__init__()
        self.net = BartForConditionalGeneration(config)
        self.net.generation_config = GenerationConfig()  # each decode passes its own
        self.config = self.net.config
        self.pad_token_id = pad_token_id
        if pad_token_id is not None:  # recorded (model folders); the embedding has no pad row
            self.config.pad_token_id = pad_token_id
        first: dict[int, str] = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            first.setdefault(id(param), name)
        canonical = {
            name: first[id(p)] for name, p in self.named_parameters(remove_duplicate=False)
        }
        self._aliases = {a: c for a, c in canonical.items() if a != c}  # alias -> kept name
        self.register_state_dict_post_hook(_drop_aliases)

    def forward(
        self,
        src_ids: torch.Tensor,
        src_mask: torch.Tensor,
        dec_ids: torch.Tensor,
        dec_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Decoder hidden states ``[B, T, d]`` (teacher forcing; read out with
        :meth:`token_nll` or :meth:`get_logits`)."""
        out = self.net.model(
            input_ids=src_ids,
            attention_mask=src_mask.long(),
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask.long(),
            use_cache=False,
        )
        return out.last_hidden_state

    def get_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` logits of hidden states ``[..., d]`` (HF's ``lm_head + final_logits_bias``)."""
        return self.net.lm_head(hidden) + self.net.final_logits_bias[0]

    def token_nll(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Float32 ``-log p(label)`` per row of ``hidden [N, d]``, ``labels [N]``, without
        ``[N, V]`` logits (same values as cross-entropy of :meth:`get_logits`)."""
        return linear_cross_entropy(
            hidden, self.net.lm_head.weight, self.net.final_logits_bias[0], labels
        )

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load a :meth:`state_dict` (a DDP ``module.`` prefix is stripped; the tied aliases are
        filled from the kept key).

        Raises:
            CheckpointError: the weights do not fit this model (another family or size).
        """
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(
                f"expected a state dict (a mapping of names to tensors), got "
                f"{type(state_dict).__name__}"
            )
        keys = list(state_dict)
        strip = bool(keys) and all(k.startswith("module.") for k in keys)
        prepared = {(k[len("module.") :] if strip else k): v for k, v in state_dict.items()}
        for alias, kept in self._aliases.items():
            if kept in prepared:
                prepared[alias] = prepared[kept]
        try:
            result = super().load_state_dict(prepared, strict=strict, assign=assign)
        except RuntimeError as err:
            raise CheckpointError(
                "the checkpoint does not fit this autoregressive (--family ar) model: "
                f"{first_sentence(str(err))} ... build it with the run's config.yaml values"
            ) from None
        if assign:  # assignment creates separate Parameters; restore the ties
            self.net.tie_weights()
        return result


def _drop_aliases(module: Seq2SeqTransformer, state_dict, prefix: str, local_metadata) -> None:
    for alias in module._aliases:
        state_dict.pop(prefix + alias, None)
