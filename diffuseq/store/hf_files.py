"""What a Hugging Face model folder written by diffuseq holds, and which folders may be replaced.

A model folder (:mod:`diffuseq.store.hf_folder`) is recognised by its files: ``model.safetensors``
and a ``config.json`` carrying ``"format": "diffuseq-model-folder"``. ``diffuseq-export --force``
(and the model folder written when training finishes) replaces an existing folder only when it
is one of these and holds nothing else than what the writer writes (:data:`WRITTEN_FILES`): a
run folder, a data folder, a parent of either or any other folder is refused and nothing is
deleted (:func:`check_out`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.store.folder_swap import owned_folder_problem
from diffuseq.store.safe_io import check_writable_folder

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HF_DIR",
    "MODEL_FILE",
    "WRITTEN_FILES",
    "check_out",
    "check_tokenizer_files",
    "is_model_folder",
    "partial_model_folder",
    "replace_problem",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
HF_DIR = "hf"  # <run>/hf/<checkpoint name>/
FORMAT = "diffuseq-model-folder"
FORMAT_VERSION = 1

# what write_model_folder may write (tokenizer files: save_pretrained's and vocab.json)
WRITTEN_FILES = frozenset(
    {MODEL_FILE, CONFIG_FILE, CARD_FILE, "environment.json", "vocab.json", "vocab.txt"}
    | {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    | {"added_tokens.json", "chat_template.jinja"}
)


def _has_marker(path: Path) -> str | None:
    try:
        info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("format") == FORMAT:
        return None
    return f'its {CONFIG_FILE} has no "format": "{FORMAT}"'


def replace_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` may not be replaced by a new model folder (``None``: it is a model folder
    this toolkit wrote: only its files, ``model.safetensors`` and a ``config.json`` with the
    format marker). Never true of a run folder, a data folder or a parent of either."""
    return owned_folder_problem(
        Path(path), allowed=WRITTEN_FILES, required=(MODEL_FILE, CONFIG_FILE), check=_has_marker
    )


def partial_model_folder(path: Path) -> bool:
    """A (maybe incomplete) temporary model folder: only files write_model_folder writes."""
    return owned_folder_problem(path, allowed=WRITTEN_FILES) is None


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model folder: it holds ``model.safetensors``, or a
    ``config.json`` in this format (one without weights is reported by :func:`read_model_folder`)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MODEL_FILE).exists():
        return True
    try:
        info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def check_out(out: Path, *, replace: bool) -> None:
    """Refuse an ``out`` that exists unless ``replace`` and it is a model folder this toolkit
    wrote (:func:`replace_problem`); nothing is deleted here.

    Raises:
        CheckpointError: naming ``out`` and why it is kept.
        ConfigError: ``out`` has no usable name, or its parent cannot be a folder.
    """
    if "\x00" in str(out):
        raise ConfigError(f"--out {str(out)!r}: a path cannot hold a NUL character")
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out {str(out)!r} names no folder; pass --out DIR")
    if len(os.fsencode(out.name)) > 255:
        raise ConfigError(
            f"--out {out}: the name {out.name[:60]!r}... is longer than the 255 bytes a file "
            "name may have; pass a shorter --out"
        )
    check_writable_folder(out.parent, "--out")
    if not (out.exists() or out.is_symlink()):
        return
    if not replace:
        raise CheckpointError(f"{out} already exists; pass --force to replace it, or --out DIR")
    problem = replace_problem(out)
    if problem is not None:
        raise CheckpointError(
            f"--out {out} is not replaced: only a model folder written by diffuseq is, and "
            f"{problem}; nothing was deleted. Choose a new --out DIR (e.g. a sub-folder)"
        )


def check_tokenizer_files(folder: Path, vocab: str, config_name: str) -> None:
    """Refuse a model folder whose tokenizer would be read from outside it: the folder must hold
    the tokenizer file its config's ``vocab`` needs (``vocab.json`` for a word-level vocab file,
    ``tokenizer.json`` otherwise); ``vocab``/``config_name`` paths in ``config.json`` (the
    training machine's) are never followed.

    Raises:
        ConfigError: naming ``config.json``, the field and its value.
    """
    from diffuseq.tokenizers.tokenizer import TOKENIZER_JSON, _vocab_kind
    from diffuseq.tokenizers.word_vocab import VOCAB_JSON

    if (folder / TOKENIZER_JSON).is_file():
        return
    kind, _ = _vocab_kind(vocab, config_name)
    if kind == "vocab_file" and (folder / VOCAB_JSON).is_file():
        return
    field, value = (
        ("run_config.model.config_name", config_name)
        if vocab == "bert"
        else ("run_config.data.vocab", vocab)
    )
    raise ConfigError(
        f"{folder / CONFIG_FILE}: {field} {value!r} points outside the model folder, which "
        f"lacks its own tokenizer file ({VOCAB_JSON if kind == 'vocab_file' else TOKENIZER_JSON}); "
        "a model folder is read only from its own files: export it again with diffuseq-export"
    )
