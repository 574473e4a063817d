"""The transformer denoiser of DiffuSeq and DiffuSeq-v2, and its checkpoint format.

Reimplements `diffuseq/transformer_model.py` (`TransformerNetModel`, spec §4) of the original
repository (Shark-NLP/DiffuSeq, branches `main` and `diffuseq-v2`): word embedding with a tied
LM head, sinusoidal time MLP, optional up/down projections, a BERT encoder without attention
mask, and the v2 learned mean embedding. Attribute names and registration order equal the
original's, so ``state_dict()`` keys and order do too (spec §4.6). Loading follows the
original's tied-weight rule: the shared ``[V, h]`` matrix ends up equal to the file's
``lm_head.weight`` (spec §4.6, §10.1 item 1).
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError
from diffuseq.nn_utils import timestep_embedding

_TIED = ("word_embedding.weight", "lm_head.weight")
# What a user changes when an architecture value of a checkpoint differs from the model.
_FLAG_OF = {
    "vocab_size": "the vocabulary (--vocab / tokenizer)",
    "hidden_dim": "--hidden_dim",
    "hidden_t_dim": "--hidden_t_dim",
    "bert_hidden_size": "--bert_hidden_size / --config_name",
    "num_layers": "--num_layers / --config_name",
    "intermediate_size": "--intermediate_size / --config_name",
    "max_position_embeddings": "--config_name (max_position_embeddings)",
    "learned_mean_embed": "--learned_mean_embed",
}


class TransformerNetModel(nn.Module):
    """x0-predicting transformer denoiser (spec §4.1–4.5).

    Args (keyword-only):
        vocab_size: ``V``, rows of the word embedding / LM head.
        hidden_dim: ``h``, word-embedding size = model input/output size.
        hidden_t_dim: ``d_t``, size of the sinusoidal timestep embedding.
        dropout: dropout after the embedding LayerNorm; also written into the encoder's
            ``hidden_dropout_prob`` (as the original does).
        bert_config: encoder architecture (see ``diffuseq.bert_config.build_bert_config``);
            copied, never mutated. ``_attn_implementation`` unset means ``"sdpa"``.
        learned_mean_embed: DiffuSeq-v2 learned mean ``μ`` ``[h]`` (first state-dict key).
        init_pretrained: ``"no"`` (PyTorch default init everywhere) or ``"bert"`` (word and
            position embeddings, embedding LayerNorm and encoder from a locally available
            pretrained BERT; needs ``hidden_dim == hidden_size``).
        config_name: the BERT name or folder to load when ``init_pretrained == "bert"``.
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

        # Registration order below = the original's = state-dict order (spec §4.1, §4.6).
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
            # Constructed directly: no BERT `_init_weights`, PyTorch default inits (spec §4.1).
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

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predict ``x_0`` (spec §4.2).

        Args:
            x: ``[B, L, h]`` noisy embeddings, ``L ≤ max_position_embeddings``.
            timesteps: ``[B]`` float, already rescaled (``t·1000/T``, spec §5.4).

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
        emb_pos = self.position_embeddings(self.position_ids[:, :L])  # [1, L, H]
        emb = emb_pos + emb_x + emb_t.unsqueeze(1).expand(-1, L, -1)  # [B, L, H]
        emb = self.dropout(self.LayerNorm(emb))
        if self._lean_training(emb):
            hidden = emb
            for layer in self.input_transformers.layer:
                hidden = _lean_bert_layer(layer, hidden)  # [B, L, H]
        else:
            hidden = self.input_transformers(emb).last_hidden_state  # [B, L, H], no attention mask
        out = self.output_down_proj(hidden) if self.output_down_proj is not None else hidden
        return out.type(x.dtype)  # [B, L, h]

    def _lean_training(self, emb: torch.Tensor) -> bool:
        """Use the memory-lean encoder forward (see :func:`_lean_bert_layer`)?

        Only for CPU training (fp32 or bf16 autocast) with the default ``"sdpa"`` attention
        (``"eager"`` keeps transformers' own layers as the reference); not under
        ``torch.compile`` (which fuses by itself), nor for encoder variants it does not cover;
        and only for activations of at least ``_LEAN_MIN_ELEMENTS`` per layer, where memory
        matters (for the demo model, 64 × 32 × 128, the recomputation cost 10% of the step and
        saved nothing).
        """
        config = self.config
        return (
            self.training
            and emb.numel() >= _LEAN_MIN_ELEMENTS
            and torch.is_grad_enabled()
            and emb.device.type == "cpu"
            and config._attn_implementation == "sdpa"
            and not torch.compiler.is_compiling()
            and config.hidden_act == "gelu"
            and not config.is_decoder
            and not getattr(config, "chunk_size_feed_forward", 0)
        )

    def get_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``E[ids]``: ``[B, L]`` int64 -> ``[B, L, h]`` (spec §4.3)."""
        return self.word_embedding(input_ids)

    def get_logits(self, hidden_repr: torch.Tensor) -> torch.Tensor:
        """``z·Eᵀ + b``: ``[B, L, h]`` -> ``[B, L, V]`` (spec §4.4, logits_mode 1)."""
        return self.lm_head(hidden_repr)

    def logits_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E [V, h], b [V])`` with ``get_logits(z) = z·Eᵀ + b``: lets the training loss compute
        the token cross-entropy in chunks, without ``[B, L, V]`` logits."""
        return self.lm_head.weight, self.lm_head.bias

    def parameter_count(self) -> int:
        """The original's logged count: ``sum(numel)`` over ``parameters()`` (tied counted once)."""
        return sum(p.numel() for p in self.parameters())

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load an original-format (or our) state dict with the original's tied-weight rule.

        Accepts the key list of spec §4.6: ``position_ids`` may be missing or of another
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
        prepared = _prepare_state_dict(state_dict)
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
                _describe_mismatch(self, prepared, missing, unexpected, mismatched)
            )
        result = super().load_state_dict(prepared, strict=False, assign=assign)
        if assign:  # assignment creates two Parameters; restore the tie
            self.lm_head.weight = self.word_embedding.weight
        return result


# ---------------------------------------------------------------------------------------------
# Memory-lean training forward of the BERT encoder (CPU; fp32 or bf16 autocast).
#
# Same modules, parameters, operations and random draws, in the same order, as transformers'
# eager ``BertLayer`` (so the same seed gives the same dropout masks and the same numbers, also
# under CPU autocast: forward and backward run under the caller's autocast state), but
# the autograd graph holds less: the dropout masks as 1-byte booleans instead of float noise
# tensors, no ``[B, heads, L, L]`` attention probabilities (recomputed in backward from Q and
# K, an extra ~1% of the layer's FLOPs) and no GELU output (recomputed from its input). For the
# paper's configuration this cuts the saved activations per layer from about 21 to 13 tensors of
# size [B, L, 768] at seq_len 64, and from about 24 to 13 at seq_len 128.


#: Smallest ``[B, L, H]`` activation (elements) for which training uses the lean forward: 2**21
#: (8 MiB in fp32; the paper's 64 × 64 × 768 is 3.1 M).
_LEAN_MIN_ELEMENTS = 1 << 21


def _dropout_scale(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1/(1-p)`` rounded exactly as ATen's dropout computes its noise (``noise.div_(1-p)``)."""
    return torch.ones((), dtype=dtype, device=device).div_(1 - p)


def _dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """The keep-mask of ATen's CPU dropout, drawn directly as booleans.

    ATen draws ``noise = bernoulli(1-p)`` in ``like``'s dtype, then ``noise /= 1-p`` and
    ``x * noise``; a boolean ``bernoulli_`` consumes the generator identically and gives the
    same mask (checked for fp32 and bf16), and ``(x * mask) * (1/(1-p))`` equals ``x * noise``
    bit for bit. The boolean draw is about twice as fast and needs no conversion.
    """
    return torch.empty(like.shape, dtype=torch.bool, device=like.device).bernoulli_(1 - p)


def _apply_mask(x: torch.Tensor, keep: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """``x * noise`` of ATen's dropout from the boolean mask: ``x·(1/(1-p))`` where kept, 0 where
    dropped.

    Kept entries are bit-identical to ATen's ``x * noise`` (``x·1·s == x·s``); dropped ones are
    +0 where ATen gives ±0. A ``masked_fill_`` instead of ``x * keep``, because multiplying by a
    boolean tensor first converts the whole mask to ``x``'s dtype (a full-size copy).
    """
    scale = _dropout_scale(p, x.dtype, x.device)
    scaled = x.mul_(scale) if inplace else x * scale
    return scaled.masked_fill_(keep.logical_not(), 0)


_fwd = torch.amp.custom_fwd(device_type="cpu")
_bwd = torch.amp.custom_bwd(device_type="cpu")


def _attention_probs(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """``softmax(q·kᵀ·scaling)`` as eager attention computes it (the in-place scaling gives the
    same values as its out-of-place ``* scaling``)."""
    return torch.softmax(torch.matmul(q, k.transpose(2, 3)).mul_(scaling), dim=-1)


class _DropoutAttention(torch.autograd.Function):
    """``dropout(softmax(q·kᵀ·scaling))·v`` saving q, k, v and a boolean mask only."""

    @staticmethod
    @_fwd
    def forward(ctx, q, k, v, p, scaling):  # noqa: D102
        probs = _attention_probs(q, k, scaling)  # [B, n, L, L]
        keep = None
        if p > 0:
            keep = _dropout_mask(probs, p)
            _apply_mask(probs, keep, p, inplace=True)
        ctx.save_for_backward(q, k, v, keep)
        ctx.p, ctx.scaling = p, scaling
        return torch.matmul(probs, v)  # [B, n, L, d]

    @staticmethod
    @_bwd
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, keep = ctx.saved_tensors
        probs = _attention_probs(q, k, ctx.scaling)
        dropped = probs if keep is None else _apply_mask(probs, keep, ctx.p)
        grad_v = torch.matmul(dropped.transpose(2, 3), grad_out)
        del dropped
        grad_probs = torch.matmul(grad_out, v.transpose(2, 3))
        if keep is not None:
            _apply_mask(grad_probs, keep, ctx.p, inplace=True)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs, probs
        grad_scores.mul_(ctx.scaling)
        return torch.matmul(grad_scores, k), torch.matmul(grad_scores.transpose(2, 3), q), grad_v, None, None


class _DropoutAdd(torch.autograd.Function):
    """``dropout(y) + residual`` saving a boolean mask instead of the float noise."""

    @staticmethod
    @_fwd
    def forward(ctx, y, residual, p):  # noqa: D102
        keep = _dropout_mask(y, p)
        ctx.save_for_backward(keep)
        ctx.p, ctx.dtypes = p, (y.dtype, residual.dtype)
        dropped = _apply_mask(y, keep, p)
        # in place only without type promotion (under autocast y is bf16, the residual fp32)
        return dropped.add_(residual) if y.dtype == residual.dtype else dropped + residual

    @staticmethod
    @_bwd
    def backward(ctx, grad):  # noqa: D102
        (keep,) = ctx.saved_tensors
        y_dtype, residual_dtype = ctx.dtypes
        grad_y = _apply_mask(grad.to(y_dtype), keep, ctx.p)  # the mul ran in y's dtype
        return grad_y, grad.to(residual_dtype), None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(u), W, b)`` saving ``u`` only (the GELU output is recomputed)."""

    @staticmethod
    @_fwd
    def forward(ctx, u, weight, bias):  # noqa: D102
        ctx.save_for_backward(u, weight, bias)
        return F.linear(F.gelu(u), weight, bias)

    @staticmethod
    @_bwd
    def backward(ctx, grad):  # noqa: D102
        u, weight, bias = ctx.saved_tensors
        dtype = grad.dtype  # the linear's compute dtype (bf16 under autocast)
        grad2 = grad.reshape(-1, grad.shape[-1])  # [N, H]
        grad_u = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_g = grad2.mm(weight.to(dtype)).view(u.shape).to(u.dtype)
            grad_u = torch.ops.aten.gelu_backward(grad_g, u)
        if ctx.needs_input_grad[1]:
            grad_w = grad2.t().mm(F.gelu(u).reshape(-1, u.shape[-1]).to(dtype)).to(weight.dtype)  # [H, I]
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0).to(bias.dtype)
        return grad_u, grad_w, grad_b


def _dropout_add(y: torch.Tensor, residual: torch.Tensor, p: float) -> torch.Tensor:
    return _DropoutAdd.apply(y, residual, p) if p > 0 else y + residual


def _lean_bert_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One transformers ``BertLayer`` in training mode, without attention mask: ``[B,L,H] -> [B,L,H]``."""
    attn, attn_out = layer.attention.self, layer.attention.output
    heads = (*x.shape[:-1], -1, attn.attention_head_size)
    q = attn.query(x).view(heads).transpose(1, 2)  # [B, n, L, d]
    k = attn.key(x).view(heads).transpose(1, 2)
    v = attn.value(x).view(heads).transpose(1, 2)
    context = _DropoutAttention.apply(q, k, v, attn.dropout.p, attn.scaling)
    context = context.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1)  # [B, L, H]
    h = attn_out.LayerNorm(_dropout_add(attn_out.dense(context), x, attn_out.dropout.p))
    out = layer.output
    y = _GeluLinear.apply(layer.intermediate.dense(h), out.dense.weight, out.dense.bias)
    return out.LayerNorm(_dropout_add(y, h, out.dropout.p))


def _prepare_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain dict without ``position_ids`` and with both tied keys = the file's ``lm_head``."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    keys = list(state_dict)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    prepared = {(k[len("module.") :] if strip else k): v for k, v in state_dict.items()}
    prepared.pop("position_ids", None)
    word_key, head_key = _TIED
    if head_key in prepared:
        prepared[word_key] = prepared[head_key]
    elif word_key in prepared:
        prepared[head_key] = prepared[word_key]
    return prepared


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int | bool]:
    """Architecture values readable from a state dict's shapes (keys that are absent are skipped).

    Returns:
        dict with some of ``vocab_size, hidden_dim, hidden_t_dim, bert_hidden_size,
        num_layers, intermediate_size, max_position_embeddings`` and always
        ``learned_mean_embed``.
    """
    sd = _prepare_state_dict(state_dict)
    arch: dict[str, int | bool] = {}
    if "word_embedding.weight" in sd:
        arch["vocab_size"], arch["hidden_dim"] = sd["word_embedding.weight"].shape  # [V, h]
    if "time_embed.0.weight" in sd:
        arch["hidden_t_dim"] = sd["time_embed.0.weight"].shape[1]  # [4 d_t, d_t]
    if "time_embed.2.weight" in sd:
        arch["bert_hidden_size"] = sd["time_embed.2.weight"].shape[0]  # [H, 4 d_t]
    layers = {
        int(m.group(1)) for k in sd if (m := re.match(r"input_transformers\.layer\.(\d+)\.", k))
    }
    if layers:
        arch["num_layers"] = max(layers) + 1
    ffn = "input_transformers.layer.0.intermediate.dense.weight"
    if ffn in sd:
        arch["intermediate_size"] = sd[ffn].shape[0]  # [I, H]
    if "position_embeddings.weight" in sd:
        arch["max_position_embeddings"] = sd["position_embeddings.weight"].shape[0]
    arch["learned_mean_embed"] = "mean_embed" in sd
    return {k: (v if isinstance(v, bool) else int(v)) for k, v in arch.items()}


def _short(items: list, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _describe_mismatch(
    model: TransformerNetModel,
    prepared: dict[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple, tuple]],
) -> str:
    parts = ["the checkpoint does not fit this model"]
    if missing:
        parts.append(f"missing keys: {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        shapes = [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mismatched]
        parts.append(f"shape mismatches: {_short(shapes)}")
    ours, theirs = infer_architecture(model.state_dict()), infer_architecture(prepared)
    diffs = [
        f"{name}: checkpoint {theirs[name]}, model {ours[name]} (set {_FLAG_OF[name]})"
        for name in _FLAG_OF
        if name in ours and name in theirs and ours[name] != theirs[name]
    ]
    if diffs:
        parts.append("the model was probably built with other settings: " + "; ".join(diffs))
    else:
        parts.append("build the model with the run's training_args.json / config.yaml values")
    return ". ".join(parts) + "."


def state_dict_for_saving(
    model: TransformerNetModel,
    *,
    ema_params: Mapping[str, torch.Tensor] | None = None,
    tied_quirk: bool = False,
) -> OrderedDict[str, torch.Tensor]:
    """The original's checkpoint content: ``model.state_dict()`` with parameters replaced by EMA.

    Args:
        model: the unwrapped model (no DDP ``module.`` prefix).
        ema_params: EMA values keyed by ``model.named_parameters()`` names (the tied matrix is
            named ``word_embedding.weight`` only); ``None`` saves the live weights.
        tied_quirk: ``True`` reproduces the original (``lm_head.weight`` keeps the raw live
            weight, spec §4.6); ``False`` (default, our fix) stores the EMA value under both
            tied keys.

    Returns:
        OrderedDict of plain detached tensors in ``state_dict()`` order.
    """
    raw = model.state_dict()
    if ema_params is None:
        return OrderedDict((k, v.detach()) for k, v in raw.items())
    names = [name for name, _ in model.named_parameters()]
    if set(names) != set(ema_params):
        raise ValueError(
            "ema_params must be keyed exactly by model.named_parameters() names; missing "
            f"{sorted(set(names) - set(ema_params))}, extra {sorted(set(ema_params) - set(names))}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in raw.items():
        if key in ema_params:
            if ema_params[key].shape != value.shape:
                raise ValueError(f"ema_params[{key!r}] has shape {tuple(ema_params[key].shape)}")
            out[key] = ema_params[key].detach()
        elif key == _TIED[1] and not tied_quirk:
            out[key] = ema_params[_TIED[0]].detach()
        else:
            out[key] = value.detach()
    return out
