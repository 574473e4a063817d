"""The transformer denoiser of DiffuSeq and DiffuSeq-v2.

Reimplements `diffuseq/transformer_model.py` (`TransformerNetModel`, docs/original.md §4) of the original
repository (Shark-NLP/DiffuSeq, branches `main` and `diffuseq-v2`): word embedding with a tied
LM head, sinusoidal time MLP, optional up/down projections, a BERT encoder without attention
mask, and the v2 learned mean embedding. Attribute names and registration order equal the
original's, so ``state_dict()`` keys and order do too (docs/original.md §4.6). Loading follows the
original's tied-weight rule: the shared ``[V, h]`` matrix ends up equal to the file's
``lm_head.weight`` (docs/original.md §4.6, §10.1 item 1).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError
from diffuseq.models.length_head import LengthPredictor
from diffuseq.models.nn_utils import timestep_embedding
from diffuseq.ops.lean_bert import LEAN_MIN_ELEMENTS, lean_bert_layer
from diffuseq.store.checkpoint_format import describe_mismatch, prepare_state_dict


class TransformerNetModel(nn.Module):
    """x0-predicting transformer denoiser (docs/original.md §4.1–4.5).

    Args (keyword-only):
        vocab_size: ``V``, rows of the word embedding / LM head.
        hidden_dim: ``h``, word-embedding size = model input/output size.
        hidden_t_dim: ``d_t``, size of the sinusoidal timestep embedding.
        dropout: dropout after the embedding LayerNorm; also written into the encoder's
            ``hidden_dropout_prob`` (as the original does).
        bert_config: encoder architecture (see ``diffuseq.models.encoder_config.build_bert_config``);
            copied, never mutated. ``_attn_implementation`` unset means ``"sdpa"``.
        learned_mean_embed: DiffuSeq-v2 learned mean ``μ`` ``[h]`` (first state-dict key).
        init_pretrained: ``"no"`` (PyTorch default init everywhere) or ``"bert"`` (word and
            position embeddings, embedding LayerNorm and encoder from a locally available
            pretrained BERT; needs ``hidden_dim == hidden_size``).
        config_name: the BERT name or folder to load when ``init_pretrained == "bert"``.
        self_cond: self-conditioning (``self_cond_proj``, see :meth:`forward`).
        embedding_norm: Difformer's embedding normalisation (``embedding_norm``, an
            elementwise-affine LayerNorm over ``h``): :meth:`get_embeds`, :meth:`get_logits`
            and the rounding table (:meth:`embedding_table`) use ``LN(E)``.
        length_predict: a target-length head (``length_head``, see :meth:`length_logits`).
        pad_token_id: the tokenizer's pad id (``pad_token_id``), needed by a model with
            ``length_predict`` (its training span and decoded padding); not saved in the
            weights: the tokenizer saved with the run or model folder gives it back.
        noise_betas: float64 ``[K]``, the diffusion's β with ``--adaptive_schedule`` (a
            buffer the network never reads: the weights carry the schedule they were trained
            with, refitted in place, to every checkpoint and model folder); ``None``: no buffer.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden_dim: int,
        hidden_t_dim: int,
        dropout: float,
        bert_config: BertConfig,
        learned_mean_embed: bool = False,
        init_pretrained: Literal["no", "bert"] = "no",
        config_name: str | None = None,
        self_cond: bool = False,
        embedding_norm: bool = False,
        length_predict: bool = False,
        pad_token_id: int | None = None,
        noise_betas: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        config = copy.deepcopy(bert_config)
        config.hidden_dropout_prob = dropout
        if config._attn_implementation is None:
            config._attn_implementation = "sdpa"
        H = config.hidden_size
        self.vocab_size, self.hidden_dim, self.hidden_t_dim = vocab_size, hidden_dim, hidden_t_dim
        self.hidden_size = H
        self.config = config

        # Registration order below = the original's = state-dict order (docs/original.md §4.1, §4.6).
        self.word_embedding = nn.Embedding(vocab_size, hidden_dim)
        self.lm_head = nn.Linear(hidden_dim, vocab_size)
        self.lm_head.weight = self.word_embedding.weight  # tied: one Parameter, two keys
        self.time_embed = nn.Sequential(
            nn.Linear(hidden_t_dim, 4 * hidden_t_dim), nn.SiLU(), nn.Linear(4 * hidden_t_dim, H)
        )
        self.input_up_proj = (
            nn.Sequential(nn.Linear(hidden_dim, H), nn.Tanh(), nn.Linear(H, H))
            if hidden_dim != H
            else None
        )
        if init_pretrained == "no":
            # Constructed directly: no BERT `_init_weights`, PyTorch default inits (docs/original.md §4.1).
            self.input_transformers = BertEncoder(config)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
            self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        elif init_pretrained == "bert":
            self._take_pretrained_bert(config_name, config)
        else:
            raise ConfigError(f"--use_plm_init must be 'no' or 'bert', got {init_pretrained!r}")
        position_ids = torch.arange(config.max_position_embeddings).unsqueeze(0)  # [1, max_pos]
        self.register_buffer("position_ids", position_ids)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.output_down_proj = (
            nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, hidden_dim))
            if hidden_dim != H
            else None
        )
        if learned_mean_embed:
            self.mean_embed = nn.Parameter(torch.empty(hidden_dim))
            nn.init.normal_(self.mean_embed, mean=0.0, std=hidden_dim**-0.5)
        else:
            self.mean_embed = None
        # Self-conditioning (beyond the original; Chen, Zhang & Hinton 2022, "Analog Bits"):
        # x̂_0 of a previous pass enters through W_sc [H, h], added to the input projection.
        # Zero-initialised (no RNG drawn) and registered last, so that a model without it keeps
        # the original's keys and initial weights, and one with it starts as the plain model.
        self.self_cond = self_cond
        if self_cond:
            self.self_cond_proj = nn.utils.skip_init(nn.Linear, hidden_dim, H, bias=False)
            nn.init.zeros_(self.self_cond_proj.weight)
        # Embedding normalisation (beyond the original; Difformer, Gao et al. 2022, arXiv
        # 2212.09412): x̄_0 = LN(E[w]), so the embeddings the diffusion runs on can neither
        # grow nor collapse freely (the learned data distribution). Registered last and
        # initialised to γ = 1, β = 0 without drawing random numbers, as W_sc above.
        self.embedding_norm = nn.LayerNorm(hidden_dim) if embedding_norm else None
        # Length prediction (beyond the original; Difformer §3, models/length_head.py).
        # Registered last, so that its random init follows every other weight's.
        self.pad_token_id = pad_token_id
        self.length_head = (
            LengthPredictor(
                hidden_dim=hidden_dim,
                max_positions=config.max_position_embeddings,
                dropout=config.hidden_dropout_prob,
            )
            if length_predict
            else None
        )
        # SeqDiffuSeq's adaptive schedule (a top-level buffer: its key comes second, after
        # position_ids; a model without it keeps the original's keys).
        if noise_betas is not None:
            betas = torch.from_numpy(np.array(noise_betas, dtype=np.float64))  # [K]
            self.register_buffer("noise_betas", betas)

    def _take_pretrained_bert(self, config_name: str | None, config: BertConfig) -> None:
        """``use_plm_init='bert'``: embeddings, LayerNorm and encoder of a local BERT."""
        from transformers import BertModel

        if config_name is None:
            raise ConfigError("--use_plm_init bert needs --config_name (a BERT name or folder)")
        if self.hidden_dim != config.hidden_size:
            raise ConfigError(
                f"--use_plm_init bert needs --hidden_dim {config.hidden_size} (the pretrained "
                f"embedding width), got --hidden_dim {self.hidden_dim}"
            )
        if self.vocab_size != config.vocab_size:
            raise ConfigError(
                f"--use_plm_init bert needs the BERT vocabulary of {config_name!r} "
                f"({config.vocab_size} tokens; use --vocab bert), got vocab_size {self.vocab_size}"
            )
        try:
            bert = BertModel.from_pretrained(
                config_name,
                config=config,
                local_files_only=True,
                attn_implementation=config._attn_implementation,
            )
        except OSError as exc:
            raise OfflineAssetError(
                f"pretrained BERT weights {config_name!r} are not available offline; pass a "
                "local folder with config.json and model weights as --config_name, or use "
                "--use_plm_init no"
            ) from exc
        self.word_embedding = bert.embeddings.word_embeddings
        self.lm_head.weight = self.word_embedding.weight
        self.input_transformers = bert.encoder
        self.position_embeddings = bert.embeddings.position_embeddings
        self.LayerNorm = bert.embeddings.LayerNorm
        self.config = bert.config

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict ``x_0`` (docs/original.md §4.2).

        Args:
            x: ``[B, L, h]`` noisy embeddings, ``L ≤ max_position_embeddings``.
            timesteps: ``[B]`` float, already rescaled (``t·1000/T``, docs/original.md §5.4).
            self_cond: ``[B, L, h]`` a previous estimate x̂_0 (models built with
                ``self_cond=True``; ``None`` means zeros: no previous estimate).

        Returns:
            ``[B, L, h]`` in ``x.dtype``.
        """
        if x.ndim != 3 or x.shape[-1] != self.hidden_dim:
            raise ValueError(f"expected x of shape [B, L, {self.hidden_dim}], got {tuple(x.shape)}")
        L = x.shape[1]
        max_len = self.position_ids.shape[1]
        if L > max_len:
            raise ValueError(
                f"sequence length {L} exceeds the encoder's max_position_embeddings ({max_len}); "
                "use a smaller --seq_len or a config with more positions"
            )
        emb_t = self.time_embed(timestep_embedding(timesteps, self.hidden_t_dim))  # [B, H]
        emb_x = self.input_up_proj(x) if self.input_up_proj is not None else x  # [B, L, H]
        if self.self_cond:
            if self_cond is None:
                self_cond = torch.zeros_like(x)
            emb_x = emb_x + self.self_cond_proj(self_cond.to(x.dtype))  # + W_sc·x̂_0 [B, L, H]
        elif self_cond is not None:
            raise ValueError("self_cond was given but the model was built without self_cond=True")
        emb_pos = self.position_embeddings(self.position_ids[:, :L])  # [1, L, H]
        emb = emb_pos + emb_x + emb_t.unsqueeze(1).expand(-1, L, -1)  # [B, L, H]
        emb = self.dropout(self.LayerNorm(emb))
        if self._lean_training(emb):
            hidden = emb
            for layer in self.input_transformers.layer:
                hidden = lean_bert_layer(layer, hidden)  # [B, L, H]
        else:
            hidden = self.input_transformers(emb).last_hidden_state  # [B, L, H], no attention mask
        out = self.output_down_proj(hidden) if self.output_down_proj is not None else hidden
        return out.type(x.dtype)  # [B, L, h]

    def _lean_training(self, emb: torch.Tensor) -> bool:
        """Use the memory-lean encoder forward (see :func:`_lean_bert_layer`)?

        Only for CPU training (fp32 or bf16 autocast) with the default ``"sdpa"`` attention
        (``"eager"`` keeps transformers' own layers as the reference); not under
        ``torch.compile`` (which fuses by itself), nor for encoder variants it does not cover;
        and only for activations of at least ``LEAN_MIN_ELEMENTS`` per layer, where memory
        matters (for the demo model, 64 × 32 × 128, the recomputation cost 10% of the step and
        saved nothing).
        """
        config = self.config
        return (
            self.training
            and emb.numel() >= LEAN_MIN_ELEMENTS
            and torch.is_grad_enabled()
            and emb.device.type == "cpu"
            and config._attn_implementation == "sdpa"
            and not torch.compiler.is_compiling()
            and config.hidden_act == "gelu"
            and not config.is_decoder
            and not getattr(config, "chunk_size_feed_forward", 0)
        )

    def embedding_table(self) -> torch.Tensor:
        """The word embeddings the diffusion runs on, ``[V, h]``: ``E`` (the tied matrix), or
        ``LN(E)`` row by row with ``embedding_norm`` (what rounding and the read-out use)."""
        weight = self.word_embedding.weight
        return weight if self.embedding_norm is None else self.embedding_norm(weight)

    def get_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``E[ids]`` (``LN(E[ids])`` with ``embedding_norm``): ``[B, L]`` int64 -> ``[B, L, h]``
        (docs/original.md §4.3)."""
        embeds = self.word_embedding(input_ids)
        return embeds if self.embedding_norm is None else self.embedding_norm(embeds)

    def get_logits(self, hidden_repr: torch.Tensor) -> torch.Tensor:
        """``z·Eᵀ + b`` (``E`` = :meth:`embedding_table`): ``[B, L, h]`` -> ``[B, L, V]``
        (docs/original.md §4.4, logits_mode 1)."""
        if self.embedding_norm is None:
            return self.lm_head(hidden_repr)
        return nn.functional.linear(hidden_repr, self.embedding_table(), self.lm_head.bias)

    def length_logits(self, input_ids: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        """Target-length logits from the source: ids ``[B, L]``, mask ``[B, L]`` (0 = source)
        -> float ``[B, L + 1]`` over lengths ``0..L`` (``length_head`` on the detached
        :meth:`get_embeds` of the ids, so the length loss leaves the embedding space alone)."""
        if self.length_head is None:
            raise ValueError("this model has no length head (trained without --length_predict)")
        embeds = self.get_embeds(input_ids).detach()  # [B, L, h]
        return self.length_head(embeds, input_mask == 0)

    def logits_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E [V, h], b [V])`` with ``get_logits(z) = z·Eᵀ + b``: lets the training loss compute
        the token cross-entropy in chunks, without ``[B, L, V]`` logits."""
        return self.embedding_table(), self.lm_head.bias

    def parameter_count(self) -> int:
        """The original's logged count: ``sum(numel)`` over ``parameters()`` (tied counted once)."""
        return sum(p.numel() for p in self.parameters())

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load an original-format (or our) state dict with the original's tied-weight rule.

        Accepts the key list of docs/original.md §4.6: ``position_ids`` may be missing or of another
        length (the model's own ``arange`` is kept), a ``module.`` prefix is stripped, and one
        of the two tied keys may be absent. When both tied keys are present, the shared
        matrix takes ``lm_head.weight`` (the original loads it last; in EMA files it holds the
        raw, non-EMA weight).

        Returns:
            torch's ``NamedTuple(missing_keys, unexpected_keys)`` (non-empty only if not strict).

        Raises:
            CheckpointError: missing/unexpected keys (if ``strict``) or shape mismatches; the
                message lists them and the architecture values that differ.
        """
        prepared = prepare_state_dict(state_dict)
        prepared["position_ids"] = self.position_ids
        expected = self.state_dict()
        missing = [k for k in expected if k not in prepared]
        unexpected = [k for k in prepared if k not in expected]
        mismatched = [
            (k, tuple(prepared[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in prepared and prepared[k].shape != v.shape
        ]
        if mismatched or (strict and (missing or unexpected)):
            raise CheckpointError(
                describe_mismatch(self, prepared, missing, unexpected, mismatched)
            )
        result = super().load_state_dict(prepared, strict=False, assign=assign)
        if assign:  # assignment creates two Parameters; restore the tie
            self.lm_head.weight = self.word_embedding.weight
        return result
