"""The one interface every tokenizer of the toolkit implements (:class:`TextTokenizer`), and
the count of input tokens that became the unknown token (:class:`UnknownTokens`)."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["UNKNOWN_WARN_FRACTION", "TextTokenizer", "UnknownTokens"]

#: Above this fraction of unknown input tokens, :meth:`UnknownTokens.report` warns.
UNKNOWN_WARN_FRACTION = 0.01


class TextTokenizer(ABC):
    """What the data pipeline, the decoder and the evaluator need from a tokenizer.

    ``special_tokens`` maps ``sos``, ``eos``, ``sep`` and ``pad`` to the strings that decoded
    text contains (e.g. ``[CLS] [SEP] [SEP] [PAD]`` for BERT); the evaluator deletes them.
    """

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the model must embed (the original's ``len(tokenizer)``)."""

    @property
    @abstractmethod
    def pad_token_id(self) -> int:
        """Id used to right-pad ``input_ids`` (BERT 0, word-level 3)."""

    @property
    @abstractmethod
    def sep_token_id(self) -> int:
        """Id placed between source and target (BERT 102 ``[SEP]``, word-level 1 ``[END]``)."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, str]:
        """``{"sos", "eos", "sep", "pad"}`` → the token strings as they appear in decoded text."""

    @property
    def unk_token_id(self) -> int | None:
        """Id that words outside the vocabulary encode to (``None``: the tokenizer has none)."""
        return None

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the special tokens ``encode`` adds (not counted as text by
        :class:`UnknownTokens`)."""
        return frozenset({self.pad_token_id, self.sep_token_id})

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode each text with specials added (``[CLS] … [SEP]``), without truncation."""

    @abstractmethod
    def _decode_kept(self, ids: list[int]) -> str:
        """Decode ids that already had their trailing pads removed."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Write what :func:`load_tokenizer_from_run` needs into the run folder ``directory``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """``{"kind": ..., ...}``: the kind and what is needed to rebuild it from a run folder."""

    @abstractmethod
    def fingerprint(self) -> dict[str, str]:
        """What makes two tokenizers encode alike: class, a hash of the vocabulary and its
        rules, the special tokens and the tokenizing library's version (the key of a
        tokenization cache entry, :mod:`diffuseq.data.cache`)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Original decode semantics (docs/original.md §3.2, §5.13).

        Only *trailing* ids equal to ``pad_token_id`` are dropped; special tokens and interior
        pads stay in the text. ``ids`` may be a list, a 1-D tensor or a 1-D array.
        """
        kept = [int(i) for i in ids]
        while kept and kept[-1] == self.pad_token_id:
            kept.pop()
        return self._decode_kept(kept)


class UnknownTokens:
    """How many tokens of encoded texts are the unknown token, out of all text tokens.

    Every place that encodes user text (training data, decode inputs, the Python API) adds its
    encodings with :meth:`add` and calls :meth:`report` once.

    >>> class Toy:  # a stand-in for a tokenizer
    ...     unk_token_id, special_token_ids = 2, frozenset({0, 1})
    >>> count = UnknownTokens(Toy())
    >>> count.add([[0, 5, 2, 1], [0, 6, 7, 1]])
    >>> count.unknown, count.total, count.message("inputs")
    (1, 4, 'inputs: 1 of 4 tokens (25.0%) are not in the vocabulary and became the unknown token')
    """

    def __init__(self, tokenizer: Any) -> None:
        self.unk_id = tokenizer.unk_token_id
        self.specials = tokenizer.special_token_ids - {self.unk_id}
        self.unknown = 0
        self.total = 0

    def add(self, encoded: Iterable[Sequence[int]]) -> None:
        """Count the ids of each encoding (lists of ids as :meth:`TextTokenizer.encode` returns)."""
        for ids in encoded:
            ids = list(ids)
            self.total += len(ids) - sum(ids.count(s) for s in self.specials)
            if self.unk_id is not None:
                self.unknown += ids.count(self.unk_id)

    def add_counts(self, *, unknown: int, total: int) -> None:
        """Add counts made elsewhere (a tokenization cache entry records them)."""
        self.unknown += unknown
        self.total += total

    @property
    def fraction(self) -> float:
        return self.unknown / self.total if self.total else 0.0

    def message(self, what: str) -> str:
        return (
            f"{what}: {self.unknown} of {self.total} tokens ({100 * self.fraction:.1f}%) are not "
            "in the vocabulary and became the unknown token"
        )

    def report(
        self, log: logging.Logger, what: str, *, threshold: float = UNKNOWN_WARN_FRACTION
    ) -> None:
        """Log the count (INFO), as a WARNING when more than ``threshold`` of tokens are unknown."""
        if self.unk_id is None:
            return
        if self.fraction > threshold:
            log.warning(
                "%s; the model sees each of them as the same token (check --vocab, the "
                "text's casing and tokenisation)",
                self.message(what),
            )
        else:
            log.info("%s", self.message(what))
