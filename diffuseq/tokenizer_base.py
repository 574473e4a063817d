"""The one interface every tokenizer of the toolkit implements (:class:`TextTokenizer`)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

__all__ = ["TextTokenizer"]


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

    def decode(self, ids: Sequence[int]) -> str:
        """Original decode semantics (docs/original.md §3.2, §5.13).

        Only *trailing* ids equal to ``pad_token_id`` are dropped; special tokens and interior
        pads stay in the text. ``ids`` may be a list, a 1-D tensor or a 1-D array.
        """
        kept = [int(i) for i in ids]
        while kept and kept[-1] == self.pad_token_id:
            kept.pop()
        return self._decode_kept(kept)
