"""The BERT encoder configuration of the denoiser, resolved without network access.

Reimplements the config step of the original's `create_model_and_diffusion` /
`TransformerNetModel.__init__` (docs/original.md §4.1): ``AutoConfig.from_pretrained(config_name)`` with
``hidden_dropout_prob`` overwritten by ``dropout``. The original downloads the config from the
hub; here the common BERT architectures are built in, a local folder is read, and any other hub
name must already be in the local Hugging Face cache. Size overrides allow small encoders.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, BertConfig

from diffuseq.errors import ConfigError, OfflineAssetError

# Architecture fields of the published BERT checkpoints (their hub config.json files).
_BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}
_BERT_LARGE = {
    **_BERT_BASE,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}
_BUILTIN: dict[str, dict] = {
    "bert-base-uncased": {**_BERT_BASE, "vocab_size": 30522},
    "bert-base-cased": {**_BERT_BASE, "vocab_size": 28996},
    "bert-large-uncased": {**_BERT_LARGE, "vocab_size": 30522},
    "bert-large-cased": {**_BERT_LARGE, "vocab_size": 28996},
}
_BUILTIN.update({f"google-bert/{name}": fields for name, fields in list(_BUILTIN.items())})

BUILTIN_CONFIG_NAMES: tuple[str, ...] = tuple(_BUILTIN)


def _from_file(config_file: Path) -> BertConfig:
    try:
        config = AutoConfig.from_pretrained(str(config_file.parent), local_files_only=True)
    except ValueError:
        # A config.json without `model_type`: read its fields as a BERT config.
        try:
            config = BertConfig.from_json_file(str(config_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the BERT config {config_file}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the BERT config {config_file}: {exc}") from exc
    return config


def _from_folder(folder: Path) -> BertConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"--config_name {str(folder)!r} is a folder without a config.json; pass a folder "
            "that holds a BERT config.json, or a built-in name such as bert-base-uncased"
        )
    return _from_file(config_file)


def _from_cache(name: str) -> BertConfig:
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise OfflineAssetError(
            f"--config_name {name!r} is not available offline (it is neither a local folder nor "
            "in the local Hugging Face cache, and nothing is downloaded at run time). Pass a "
            "local folder with a config.json, or use a built-in name ("
            + ", ".join(n for n in BUILTIN_CONFIG_NAMES if "/" not in n)
            + ") with size overrides (--num_layers, --num_heads, --bert_hidden_size, "
            "--intermediate_size)."
        ) from exc


def _resolve(config_name: str) -> BertConfig:
    path = Path(config_name).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file() and path.name == "config.json":
        return _from_file(path)
    if config_name in _BUILTIN:
        return BertConfig(**_BUILTIN[config_name])
    if path.is_absolute() or config_name.startswith(("./", "../", "~")) or path.suffix == ".json":
        raise ConfigError(
            f"--config_name {config_name!r} looks like a path but no such folder exists; pass an "
            "existing folder holding a config.json, or a built-in name such as bert-base-uncased"
        )
    return _from_cache(config_name)


def build_bert_config(
    config_name: str | os.PathLike = "bert-base-uncased",
    *,
    dropout: float,
    num_layers: int | None = None,
    num_heads: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int | None = None,
    attn_implementation: str = "sdpa",
) -> BertConfig:
    """Resolve the encoder's ``BertConfig`` offline (docs/original.md §4.1).

    Args:
        config_name: a built-in name (``bert-base-uncased``, ``bert-base-cased``,
            ``bert-large-uncased``, ``bert-large-cased``, optionally prefixed ``google-bert/``),
            a local folder with a ``config.json`` (or that file itself), or a hub name present
            in the local HF cache.
        dropout: written into ``hidden_dropout_prob`` (as the original does); the attention
            dropout keeps the config's value.
        num_layers, num_heads, hidden_size, intermediate_size, max_position_embeddings:
            optional size overrides; ``None`` or ``0`` keeps the value of ``config_name``.
        attn_implementation: ``"sdpa"`` (default; same numbers as eager within fp32 rounding)
            or ``"eager"``.

    Returns:
        A fresh ``BertConfig`` (never shared with a cache).

    Raises:
        ConfigError: invalid overrides, a missing folder or an unreadable config.json.
        OfflineAssetError: a hub name that is not in the local cache.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout}")
    if attn_implementation not in ("sdpa", "eager"):
        raise ConfigError(
            f"attention implementation must be 'sdpa' or 'eager', got {attn_implementation!r}"
        )
    config = _resolve(os.fspath(config_name))
    if not isinstance(config, BertConfig):
        # Any encoder config with BERT's fields (e.g. RoBERTa) drives a BertEncoder, as upstream.
        config = BertConfig(**config.to_dict())
    overrides = {
        "num_hidden_layers": ("--num_layers", num_layers),
        "num_attention_heads": ("--num_heads", num_heads),
        "hidden_size": ("--bert_hidden_size", hidden_size),
        "intermediate_size": ("--intermediate_size", intermediate_size),
        "max_position_embeddings": ("max_position_embeddings", max_position_embeddings),
    }
    for field, (flag, value) in overrides.items():
        if value is None or value == 0:
            continue
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
        setattr(config, field, value)
    if config.hidden_size % config.num_attention_heads != 0:
        raise ConfigError(
            f"the encoder width ({config.hidden_size}) must be divisible by the number of "
            f"attention heads ({config.num_attention_heads}); change --bert_hidden_size or "
            "--num_heads"
        )
    config.hidden_dropout_prob = float(dropout)
    config._attn_implementation = attn_implementation
    return config
