"""The original's word-level vocabulary file (``--vocab path/to/vocab.txt``, docs/original.md §3.2).

Part of ``basic_utils.myTokenizer`` of the original: whitespace-split words, four special
tokens, and the run folder's ``vocab.json``. Loaded through :func:`diffuseq.tokenizers.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffuseq.errors import CheckpointError, DataError
from diffuseq.tokenizers.base import TextTokenizer

__all__ = ["VOCAB_JSON", "VocabFileTokenizer"]

VOCAB_JSON = "vocab.json"  # the original's file name for a saved word-level vocab


class VocabFileTokenizer(TextTokenizer):
    """The original's word-level vocabulary (``--vocab path/to/vocab.txt``, docs/original.md §3.2).

    Ids: ``[START] 0, [END] 1, [UNK] 2, [PAD] 3``, then one id per line of the file in file
    order. Encoding splits on whitespace (case-sensitive), maps unknown words to 2 and wraps the
    ids as ``[0] + ids + [1]``. Decoding joins tokens with single spaces and deletes every
    ``"__ "`` and ``"@@ "`` (subword continuation markers).

    Args:
        vocab: token → id, starting with the four specials (as saved in ``vocab.json``).
        source: the file it was read from (recorded by :meth:`describe`).
    """

    SPECIALS = ("[START]", "[END]", "[UNK]", "[PAD]")
    START_ID, END_ID, UNK_ID, PAD_ID = 0, 1, 2, 3

    def __init__(self, vocab: Mapping[str, int], *, source: str = "") -> None:
        for expected_id, token in enumerate(self.SPECIALS):
            if vocab.get(token) != expected_id:
                raise DataError(
                    source or VOCAB_JSON,
                    None,
                    token,
                    f"a word-level vocabulary must map {token} to {expected_id}; got "
                    f"{vocab.get(token)!r}. Rebuild it from the vocab file.",
                )
        self._vocab = dict(vocab)
        # Later entries win, like the original's reverse dict.
        self._rev = {int(i): token for token, i in self._vocab.items()}
        self._source = source

    @classmethod
    def from_vocab_file(
        cls, path: str | os.PathLike, *, allow_duplicates: bool = False
    ) -> VocabFileTokenizer:
        """Read the original's vocab-file format: the first space-separated field of each line.

        Lines may be ``token`` or ``token count`` (fairseq style). Raises :class:`DataError`
        naming the line of a duplicate token unless ``allow_duplicates`` is set, in which case
        the original's (corrupting) reassignment ``vocab[token] = len(vocab)`` is reproduced.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(
                str(path),
                None,
                None,
                "vocab file not found. --vocab takes bert, wordpiece, hf:NAME_OR_FOLDER, a "
                "tokenizer folder, or the path of a word-level vocab file (one token per line).",
            )
        vocab = {token: i for i, token in enumerate(cls.SPECIALS)}
        first_line: dict[str, int] = {}
        try:
            lines = path.read_bytes().splitlines()
        except OSError as err:
            problem = f"cannot read the vocab file ({err.strerror})."
            raise DataError(str(path), None, None, problem) from None
        for line_no, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a BOM is not a word
            except UnicodeDecodeError as err:
                raise DataError(
                    str(path), line_no, None, f"not UTF-8 text ({err.reason} at byte {err.start})."
                ) from None
            token = line.strip().split(" ")[0]
            if token in vocab and not allow_duplicates:
                raise DataError(str(path), line_no, None, _duplicate_message(token, first_line))
            first_line.setdefault(token, line_no)
            vocab[token] = len(vocab)
        if not any(token.strip() for token in vocab if token not in cls.SPECIALS):
            raise DataError(
                str(path),
                None,
                None,
                "the vocab file holds no word (empty, or blank lines only): every token would "
                "become the unknown token. Give one token per line.",
            )
        return cls(vocab, source=str(path))

    @classmethod
    def from_json(cls, path: str | os.PathLike, *, source: str = "") -> VocabFileTokenizer:
        """Load a saved ``vocab.json`` (token → id dict, the original's run-folder file)."""
        try:
            vocab = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # also UnicodeDecodeError
            raise CheckpointError(f"{path}: cannot read the saved vocabulary ({err}).") from err
        if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()
        ):
            raise CheckpointError(f"{path}: expected a JSON object mapping tokens to integer ids.")
        return cls(vocab, source=source or str(path))

    @property
    def vocab(self) -> dict[str, int]:
        """A copy of the token → id dict."""
        return dict(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def pad_token_id(self) -> int:
        return self.PAD_ID

    @property
    def sep_token_id(self) -> int:
        return self.END_ID

    @property
    def unk_token_id(self) -> int:
        return self.UNK_ID

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset({self.START_ID, self.END_ID, self.PAD_ID})

    @property
    def special_tokens(self) -> dict[str, str]:
        return {"sos": "[START]", "eos": "[END]", "sep": "[END]", "pad": "[PAD]"}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        get = self._vocab.get
        return [
            [self.START_ID, *(get(word, self.UNK_ID) for word in text.split()), self.END_ID]
            for text in texts
        ]

    def _decode_kept(self, ids: list[int]) -> str:
        # An id missing from the reverse dict only occurs with allow_duplicates (the original
        # raised KeyError there); show it as [UNK].
        text = " ".join(self._rev.get(i, "[UNK]") for i in ids)
        return text.replace("__ ", "").replace("@@ ", "")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` exactly as the original does (``json.dump`` defaults)."""
        with (Path(directory) / VOCAB_JSON).open("w", encoding="utf-8") as handle:
            json.dump(self._vocab, handle)

    def fingerprint(self) -> dict[str, str]:
        text = json.dumps(sorted(self._vocab.items(), key=lambda item: item[1]))
        return {
            "class": type(self).__name__,
            "rules_blake2b": hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
            "special_tokens": " ".join(self.SPECIALS),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "vocab_file",
            "source": self._source,
            "vocab_size": self.vocab_size,
            "files": [VOCAB_JSON],
        }


def _duplicate_message(token: str, first_line: Mapping[str, int]) -> str:
    if token in VocabFileTokenizer.SPECIALS:
        where = f"it is a built-in special token (id {VocabFileTokenizer.SPECIALS.index(token)})"
    elif token == "":
        where = f"blank line; the first blank line (line {first_line['']}) already gave '' an id"
    else:
        where = f"first seen on line {first_line[token]}"
    return (
        f"duplicate token {token!r} ({where}). The original DiffuSeq silently reassigns ids here, "
        "which corrupts the vocabulary: remove the line, or pass allow_duplicate_vocab=True to "
        "reproduce the original's ids."
    )
