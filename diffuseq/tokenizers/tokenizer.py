"""Text tokenizers behind one small interface.

Reimplements DiffuSeq's ``basic_utils.myTokenizer`` (docs/original.md §3.2): the Hugging Face tokenizer
selected by ``--vocab bert`` and the word-level vocab-file format selected by
``--vocab path/to/vocab.txt``. Adds a third kind, ``--vocab wordpiece``: a WordPiece vocabulary
learned from the training data, for runs without any hub asset.

``--vocab`` values (:func:`load_tokenizer`):

* ``bert``: the Hugging Face tokenizer named by ``config_name`` (default ``bert-base-uncased``).
* ``hf:NAME_OR_PATH``, or an existing directory: any Hugging Face fast tokenizer. A directory
  holding only ``vocab.txt`` is read as an uncased BERT WordPiece vocabulary.
* ``wordpiece``: learned from the training files' ``src`` and ``trg`` texts.
* a BERT WordPiece ``vocab.txt`` file (it lists ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and ``##``
  pieces, e.g. bert-base-uncased's): a BERT tokenizer on that vocabulary, lower-casing unless
  the vocabulary holds upper-case tokens (a cased BERT). This is how to use BERT offline.
* anything else: a word-level vocab file in the original's format.

Nothing is ever downloaded: hub names are looked up with ``local_files_only=True`` and a name
missing from the local cache raises :class:`~diffuseq.errors.OfflineAssetError` at once.

Differences from the original (deliberate):

* Hugging Face decoding passes ``clean_up_tokenization_spaces=True`` explicitly, which reproduces
  the pinned transformers 4.22 output (newer versions changed the default).
* A duplicate line in a vocab file raises :class:`~diffuseq.errors.DataError`; the original
  silently gives the duplicate (and the next new token) the same new id, corrupting the mapping.
  ``allow_duplicate_vocab=True`` reproduces the original's ids.
* :func:`load_tokenizer_from_run` reads the tokenizer saved in the run folder, so decoding works
  after the original vocab path is gone (the original needs that path at decode time).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from diffuseq.data.jsonl import iter_records
from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError
from diffuseq.tokenizers.base import TextTokenizer, UnknownTokens
from diffuseq.tokenizers.word_vocab import VOCAB_JSON, VocabFileTokenizer
from diffuseq.tokenizers.wordpiece import build_wordpiece_backend

__all__ = [
    "HFTokenizer",
    "TextTokenizer",
    "UnknownTokens",
    "VOCAB_JSON",
    "VocabFileTokenizer",
    "load_hf_tokenizer",
    "load_tokenizer",
    "load_tokenizer_from_run",
    "train_wordpiece",
]

TOKENIZER_JSON = "tokenizer.json"  # Hugging Face / `tokenizers` serialisation

_OFFLINE_HINT = (
    "Nothing is downloaded at run time. Pass a local folder holding vocab.txt or tokenizer.json "
    "(--vocab path/to/folder, or --config_name path/to/folder with --vocab bert), a word-level "
    "vocab file (--vocab path/to/vocab.txt), or --vocab wordpiece to learn a vocabulary from the "
    "training data."
)


class HFTokenizer(TextTokenizer):
    """A Hugging Face fast tokenizer (``--vocab bert``, ``hf:NAME``, a folder, or ``wordpiece``).

    Args:
        tokenizer: a ``transformers`` fast tokenizer with ``sep`` and ``pad`` tokens.
        kind: ``"hf"``, or ``"wordpiece"`` for a vocabulary learned by :func:`train_wordpiece`.
        source: hub name or folder it was loaded from (recorded by :meth:`describe`).
    """

    def __init__(self, tokenizer: Any, *, kind: str = "hf", source: str = "") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"tokenizer {source!r} is a slow (Python) tokenizer; DiffuSeq needs a fast one "
                "(a folder with tokenizer.json or a BERT vocab.txt)."
            )
        missing = [name for name in ("sep_token", "pad_token") if getattr(tokenizer, name) is None]
        if missing:
            raise ConfigError(
                f"tokenizer {source!r} has no {' / '.join(missing)}; the data layout "
                "[CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]… needs BERT-style special tokens. "
                "Use a BERT-style tokenizer, a word-level vocab file, or --vocab wordpiece."
            )
        self._tok = tokenizer
        self._kind = kind
        self._source = source

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_token_id(self) -> int:
        return int(self._tok.pad_token_id)

    @property
    def sep_token_id(self) -> int:
        return int(self._tok.sep_token_id)

    @property
    def unk_token_id(self) -> int | None:
        return None if self._tok.unk_token_id is None else int(self._tok.unk_token_id)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self._tok.all_special_ids)

    @property
    def special_tokens(self) -> dict[str, str]:
        tok = self._tok
        return {
            "sos": tok.cls_token or tok.bos_token or "",
            "eos": tok.sep_token or tok.eos_token,
            "sep": tok.sep_token,
            "pad": tok.pad_token,
        }

    @property
    def hf_tokenizer(self) -> Any:
        """The wrapped ``transformers`` tokenizer."""
        return self._tok

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            # Same ids as the call below (what `__call__` runs for fast tokenizers), about
            # twice as fast because no offsets are computed.
            encodings = backend.encode_batch_fast(list(texts), add_special_tokens=True)
            return [encoding.ids for encoding in encodings]
        out = self._tok(
            list(texts),
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [list(ids) for ids in out["input_ids"]]

    def _decode_kept(self, ids: list[int]) -> str:
        # transformers 4.22 (pinned by the original) cleaned up spaces by default; 5.x does not.
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True)

    def save(self, directory: str | os.PathLike) -> None:
        """``save_pretrained`` into ``directory``: ``tokenizer.json``, ``tokenizer_config.json``."""
        self._tok.save_pretrained(str(directory))

    def fingerprint(self) -> dict[str, str]:
        import tokenizers

        backend = getattr(self._tok, "backend_tokenizer", None)
        rules = backend.to_str() if backend is not None else repr(self._tok.get_vocab())
        specials = json.dumps(self._tok.special_tokens_map, sort_keys=True, default=str)
        return {
            "class": type(self._tok).__name__,
            "rules_blake2b": hashlib.blake2b(rules.encode(), digest_size=16).hexdigest(),
            "special_tokens": specials,
            "tokenizers": tokenizers.__version__,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self._kind,
            "source": self._source,
            "class": type(self._tok).__name__,
            "vocab_size": self.vocab_size,
            "files": [TOKENIZER_JSON, "tokenizer_config.json"],
        }


# ----------------------------------------------------------------------------------------------
# WordPiece vocabulary learned from the training data (--vocab wordpiece)
# ----------------------------------------------------------------------------------------------


def train_wordpiece(texts: Iterable[str], *, vocab_size: int = 8000) -> HFTokenizer:
    """Learn an uncased BERT-style WordPiece tokenizer from ``texts`` (see :mod:`diffuseq.tokenizers.wordpiece`)."""
    backend = build_wordpiece_backend(texts, vocab_size=vocab_size)
    return HFTokenizer(_wrap_backend(backend), kind="wordpiece", source="wordpiece")


def _wrap_backend(backend: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------


def load_hf_tokenizer(name_or_path: str, *, flag: str = "--vocab") -> HFTokenizer:
    """Load a Hugging Face fast tokenizer from a folder or the local hub cache, never the network.

    A folder holding only ``vocab.txt`` (no ``tokenizer.json`` / ``tokenizer_config.json`` /
    ``config.json``) is read as an uncased BERT WordPiece vocabulary. (transformers 5.x ignores
    ``BertTokenizerFast(vocab_file=...)``, so the folder is always passed to ``from_pretrained``.)

    Raises:
        OfflineAssetError: ``name_or_path`` is a hub name that is not in the local cache.
        ConfigError: the folder exists but holds no usable tokenizer.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        files = {p.name for p in path.iterdir()}
        bare_vocab = "vocab.txt" in files and not files & {
            TOKENIZER_JSON,
            "tokenizer_config.json",
            "config.json",
        }
        loader = BertTokenizerFast if bare_vocab else AutoTokenizer
        try:
            tok = loader.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{flag} {name_or_path}: the folder holds no usable tokenizer ({err}). It needs "
                "tokenizer.json (+ tokenizer_config.json) or a BERT vocab.txt."
            ) from err
        return HFTokenizer(tok, source=str(path))
    if name_or_path.startswith((".", "/", "~", os.sep)) or name_or_path.count("/") > 1:
        raise ConfigError(f"{flag} {name_or_path}: folder not found. {_OFFLINE_HINT}")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise OfflineAssetError(
            f"{flag}: tokenizer {name_or_path!r} is not in the local Hugging Face cache and "
            f"downloading is disabled. {_OFFLINE_HINT}"
        ) from err
    return HFTokenizer(tok, source=name_or_path)


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def is_bert_vocab_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a BERT WordPiece vocabulary: one token per line, all of
    :data:`BERT_SPECIAL_TOKENS` and at least one ``##`` continuation piece."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a leading BOM is not part of [PAD]
            tokens = {line.rstrip("\n") for line in handle}
    except (OSError, UnicodeDecodeError):
        return False  # the word-level loader reports the file's problem
    return set(BERT_SPECIAL_TOKENS) <= tokens and any(t.startswith("##") for t in tokens)


def load_bert_vocab_file(path: str | os.PathLike) -> HFTokenizer:
    """A BERT fast tokenizer on the WordPiece vocabulary file ``path`` (no download).

    transformers 5.x ignores ``BertTokenizerFast(vocab_file=...)``, so the file is copied as
    ``vocab.txt`` into a temporary folder that ``from_pretrained`` reads. Lower-cases (uncased
    BERT) unless a non-special token holds an upper-case letter (cased BERT vocabularies do).
    """
    import tempfile

    from transformers import BertTokenizerFast

    with open(path, encoding="utf-8-sig") as handle:
        tokens = [line.rstrip("\n") for line in handle]
    cased = any(t not in BERT_SPECIAL_TOKENS and t != t.lower() for t in tokens)
    with tempfile.TemporaryDirectory() as folder:
        # rewritten rather than copied, so that a UTF-8 BOM does not stick to the first token
        (Path(folder) / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), "utf-8")
        tok = BertTokenizerFast.from_pretrained(
            folder, local_files_only=True, do_lower_case=not cased
        )
    return HFTokenizer(tok, source=str(path))


def _vocab_kind(vocab: str, config_name: str) -> tuple[str, str]:
    """``--vocab`` value → (kind, argument); kinds: ``hf``, ``wordpiece``, ``bert_vocab_file``,
    ``vocab_file``."""
    if vocab == "bert":
        return "hf", config_name
    if vocab == "wordpiece":
        return "wordpiece", ""
    if vocab.startswith("hf:"):
        return "hf", vocab[3:]
    if Path(vocab).expanduser().is_dir():
        return "hf", vocab
    if Path(vocab).expanduser().is_file() and is_bert_vocab_file(Path(vocab).expanduser()):
        return "bert_vocab_file", str(Path(vocab).expanduser())
    return "vocab_file", vocab


def load_tokenizer(
    vocab: str,
    *,
    config_name: str = "bert-base-uncased",
    train_files: Sequence[str | os.PathLike] | None = None,
    wordpiece_vocab_size: int = 8000,
    allow_duplicate_vocab: bool = False,
) -> TextTokenizer:
    """Build the tokenizer selected by ``--vocab`` (see the module docstring for the values).

    Args:
        vocab: ``bert`` | ``hf:NAME_OR_PATH`` | a tokenizer folder | ``wordpiece`` | a vocab file.
        config_name: tokenizer name or folder used by ``--vocab bert``.
        train_files: jsonl files whose ``src``/``trg`` texts ``--vocab wordpiece`` learns from.
        wordpiece_vocab_size: target vocabulary size for ``--vocab wordpiece``.
        allow_duplicate_vocab: reproduce the original's id reassignment on duplicate vocab lines.
    """
    kind, arg = _vocab_kind(vocab, config_name)
    if kind == "hf":
        flag = "--config_name" if vocab == "bert" else "--vocab"
        return load_hf_tokenizer(arg, flag=flag)
    if kind == "bert_vocab_file":
        return load_bert_vocab_file(arg)
    if kind == "wordpiece":
        if not train_files:
            raise ConfigError(
                "--vocab wordpiece learns its vocabulary from the training data: pass the "
                "training jsonl file(s)."
            )
        texts = (
            record[field].strip()
            for path in train_files
            for _, record in iter_records(path, ("src", "trg"))
            for field in ("src", "trg")
        )
        return train_wordpiece(texts, vocab_size=wordpiece_vocab_size)
    return VocabFileTokenizer.from_vocab_file(arg, allow_duplicates=allow_duplicate_vocab)


def load_tokenizer_from_run(
    run_dir: str | os.PathLike, vocab: str, *, config_name: str = "bert-base-uncased"
) -> TextTokenizer:
    """Rebuild a run's tokenizer, preferring what training saved in ``run_dir``.

    ``vocab`` and ``config_name`` are the run's values (from ``training_args.json``):
    word-level runs read ``run_dir/vocab.json`` (falling back to the vocab file if it still
    exists); ``wordpiece`` and Hugging Face runs read ``run_dir/tokenizer.json`` (written by
    :meth:`TextTokenizer.save`); a Hugging Face run without it loads ``vocab``/``config_name``.
    """
    run_dir = Path(run_dir)
    kind, arg = _vocab_kind(vocab, config_name)
    if kind == "vocab_file" and (run_dir / VOCAB_JSON).is_file():
        return VocabFileTokenizer.from_json(run_dir / VOCAB_JSON, source=arg)
    if (run_dir / TOKENIZER_JSON).is_file():  # also a tokenizer folder that no longer exists
        tokenizer = load_hf_tokenizer(str(run_dir), flag="run folder")
        return HFTokenizer(tokenizer.hf_tokenizer, kind=kind, source=str(run_dir))
    if kind == "wordpiece":
        raise CheckpointError(
            f"{run_dir}: the run was trained with --vocab wordpiece but {TOKENIZER_JSON}, where "
            "training saves the learned vocabulary, is missing from the run folder."
        )
    if kind == "vocab_file" and not Path(arg).is_file():
        raise CheckpointError(
            f"{run_dir}: no {VOCAB_JSON} in the run folder and the run's vocab file {arg!r} does "
            "not exist; copy the vocab file back or pass --vocab path/to/vocab.txt."
        )
    return load_tokenizer(vocab, config_name=config_name)
