"""The original's model checkpoint format: state-dict keys, the tied weight, EMA files.

A DiffuSeq model file (``ema_<rate>_<step>.pt``) is a ``state_dict()`` of
:class:`~diffuseq.models.denoiser.TransformerNetModel` with the original's key names and order
(docs/original.md §4.6). The word embedding and the LM head share one matrix, stored under both
``word_embedding.weight`` and ``lm_head.weight``; on loading, the original takes
``lm_head.weight`` (its EMA files hold the raw, non-EMA value there, §10.1 item 1).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from diffuseq.config.fields import weights_hints
from diffuseq.config.sections import DiffusionConfig, ModelConfig
from diffuseq.errors import CheckpointError

__all__ = [
    "TIED_KEYS",
    "describe_mismatch",
    "infer_architecture",
    "prepare_state_dict",
    "state_dict_for_saving",
]

TIED_KEYS = ("word_embedding.weight", "lm_head.weight")
# What a user changes when an architecture value of a checkpoint differs from the model: the
# model fields declared ``in_weights`` (config/sections.py), plus what only the encoder's
# config decides.
_FLAG_OF = {
    **weights_hints(ModelConfig),
    **weights_hints(DiffusionConfig),
    "max_position_embeddings": "--config_name (max_position_embeddings)",
}


def prepare_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain dict without ``position_ids`` and with both tied keys = the file's ``lm_head``."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    keys = list(state_dict)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    prepared = {(k[len("module.") :] if strip else k): v for k, v in state_dict.items()}
    prepared.pop("position_ids", None)
    word_key, head_key = TIED_KEYS
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
        ``learned_mean_embed``, ``self_cond``, ``embedding_norm``, ``length_predict`` and
        ``adaptive_schedule`` (the weights carry ``noise_betas``).
    """
    sd = prepare_state_dict(state_dict)
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
    arch["self_cond"] = "self_cond_proj.weight" in sd
    arch["embedding_norm"] = "embedding_norm.weight" in sd
    arch["length_predict"] = "length_head.proj.weight" in sd
    arch["adaptive_schedule"] = "noise_betas" in sd
    return {k: (v if isinstance(v, bool) else int(v)) for k, v in arch.items()}


def _short(items: list, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def describe_mismatch(
    model: nn.Module,
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
        for name in theirs  # infer_architecture's order
        if name in _FLAG_OF and name in ours and ours[name] != theirs[name]
    ]
    if diffs:
        parts.append("the model was probably built with other settings: " + "; ".join(diffs))
    else:
        parts.append("build the model with the run's training_args.json / config.yaml values")
    return ". ".join(parts) + "."


def state_dict_for_saving(
    model: nn.Module,
    *,
    ema_params: Mapping[str, torch.Tensor] | None = None,
    tied_quirk: bool = False,
) -> OrderedDict[str, torch.Tensor]:
    """The original's checkpoint content: ``model.state_dict()`` with parameters replaced by EMA.

    The container and entry types are the original's (its ``_state_dict_to_master_params``
    wrote the EMA parameter list into ``model.state_dict()``): an ``OrderedDict`` (with the
    ``_metadata`` that ``state_dict()`` attaches) whose parameter entries are ``nn.Parameter``
    with ``requires_grad=True``, while buffers (``position_ids``) and ``lm_head.weight`` (the
    tied matrix, which ``named_parameters()`` lists once only) are plain tensors. All of these
    load with ``torch.load(weights_only=True)``.

    Args:
        model: the unwrapped model (no DDP ``module.`` prefix).
        ema_params: EMA values keyed by ``model.named_parameters()`` names (the tied matrix is
            named ``word_embedding.weight`` only); ``None`` saves the live weights.
        tied_quirk: ``True`` reproduces the original (``lm_head.weight`` keeps the raw live
            weight, docs/original.md §4.6); ``False`` (default, our fix) stores the EMA value under both
            tied keys.

    Returns:
        OrderedDict of detached CPU values in ``state_dict()`` order.
    """
    raw = model.state_dict()
    names = [name for name, _ in model.named_parameters()]
    if ema_params is None:
        ema_params = dict(model.named_parameters())
    elif set(names) != set(ema_params):
        raise ValueError(
            "ema_params must be keyed exactly by model.named_parameters() names; missing "
            f"{sorted(set(names) - set(ema_params))}, extra {sorted(set(ema_params) - set(names))}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in raw.items():
        if key in ema_params:
            if ema_params[key].shape != value.shape:
                raise ValueError(f"ema_params[{key!r}] has shape {tuple(ema_params[key].shape)}")
            out[key] = nn.Parameter(ema_params[key].detach().cpu(), requires_grad=True)
        elif key == TIED_KEYS[1] and not tied_quirk and TIED_KEYS[0] in ema_params:
            out[key] = ema_params[TIED_KEYS[0]].detach().cpu()
        else:
            out[key] = value.detach().cpu()
    out._metadata = raw._metadata  # type: ignore[attr-defined]  # module versions, as state_dict()
    return out
