"""Fast tokenization for the tokenization cache: each distinct word is tokenized once.

Building the cache of a 3.4M-pair file spends most of its time encoding the same few hundred
thousand words over and over, and turning per-text id lists into arrays in Python. A
:class:`WordMemo` splits each text into whitespace-separated words, tokenizes every word it has
not seen yet (in one batch per chunk), and assembles each text's ids as
``prefix + ids(w1) + ids(w2) + … + suffix`` with numpy gathers. :func:`merge_flat` is the
vectorised :func:`diffuseq.data.dataset.merge_example` over a whole chunk.

This gives exactly the ids of :meth:`TextTokenizer.encode` (tested on both tokenizer kinds)
because each kind splits at the same places:

* word-level vocab files (:class:`~diffuseq.tokenizers.word_vocab.VocabFileTokenizer`): ``str.split()``
  words, each one id, between ``[START]`` and ``[END]``: the tokenizer's own definition.
* BERT WordPiece tokenizers (normaliser ``BertNormalizer`` or none, pre-tokenizer
  ``BertPreTokenizer``, model ``WordPiece``, one ``[CLS] … [SEP]`` template): the normaliser is
  character by character (clean-up, CJK padding, accents, lower case), the pre-tokenizer splits
  at every white space and punctuation character and WordPiece works word by word, so splitting
  first at ASCII space, tab, CR and LF changes nothing. Texts with any other character Python
  counts as white space (vertical tab, form feed, U+001C–U+001F, U+0085: BERT's clean-up
  *deletes* these, joining their neighbours; U+00A0 etc.) are kept whole, as one "word".

Any other tokenizer (byte-level BPE, SentencePiece, …) gets no memo (:func:`word_memo_for`
returns ``None``) and the cache is built with :meth:`TextTokenizer.encode`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["WordMemo", "flatten", "merge_flat", "word_memo_for"]

#: Python white space other than space, tab, CR and LF (what ``str.split()`` also splits at).
_OTHER_SPACE = re.compile(
    r"[\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)


def flatten(encoded: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32 [sum of lengths], lengths int64 [N])`` of a list of id lists."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(
        (i for ids in encoded for i in ids), dtype=np.int32, count=int(lengths.sum())
    )
    return flat, lengths


class WordMemo:
    """Encode texts word by word, each distinct word once (see the module docstring).

    Args:
        prefix, suffix: ids added before and after every text (``[CLS]``, ``[SEP]``).
        encode_words: words → their ids without specials (called once per new word).
        split: text → its words; ``None`` for a text that must stay whole (it is then
            tokenized as a single "word", which is still exact).
    """

    def __init__(
        self,
        *,
        prefix: Sequence[int],
        suffix: Sequence[int],
        encode_words: Callable[[list[str]], list[list[int]]],
        split: Callable[[str], list[str] | None],
    ) -> None:
        self._encode_words = encode_words
        self._split = split
        self._index: dict[str, int] = {}
        # The piece table: entry 0 is the prefix, 1 the suffix, then one entry per word.
        self._pieces: list[np.ndarray] = [
            np.asarray(prefix, dtype=np.int32),
            np.asarray(suffix, dtype=np.int32),
        ]
        self._flat = np.zeros(0, dtype=np.int32)
        self._starts = np.zeros(0, dtype=np.int64)
        self._lengths = np.zeros(0, dtype=np.int64)
        self._table_size = 0

    @property
    def words(self) -> int:
        """Distinct words tokenized so far."""
        return len(self._index)

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int32 [T], lengths int64 [N])``: the texts' ids back to back, specials
        included, equal to :func:`flatten` of ``tokenizer.encode(texts)``."""
        words_of = []
        for text in texts:
            words = self._split(text)
            words_of.append([text] if words is None else words)
        words = [w for ws in words_of for w in ws]
        index = self._index
        new = [w for w in dict.fromkeys(words) if w not in index]
        if new:
            for word, ids in zip(new, self._encode_words(new)):
                index[word] = len(self._pieces)
                self._pieces.append(np.asarray(ids, dtype=np.int32))
        self._refresh_table()
        counts = np.fromiter(map(len, words_of), dtype=np.int64, count=len(texts))  # [N]
        # Each text's segments: prefix (0), its words, suffix (1).
        seg_counts = counts + 2
        seg_starts = np.cumsum(seg_counts) - seg_counts  # [N]
        segments = np.empty(int(seg_counts.sum()), dtype=np.int64)
        segments[seg_starts] = 0
        segments[seg_starts + seg_counts - 1] = 1
        word_pos = np.arange(len(words)) + np.repeat(
            seg_starts + 1 - (np.cumsum(counts) - counts), counts
        )
        segments[word_pos] = np.fromiter(map(index.__getitem__, words), np.int64, len(words))
        piece_len = self._lengths[segments]  # [S]
        ids = ragged_gather(self._flat, self._starts[segments], piece_len)
        lengths = np.bincount(
            np.repeat(np.arange(len(texts)), seg_counts), weights=piece_len, minlength=len(texts)
        ).astype(np.int64)
        return ids, lengths

    def _refresh_table(self) -> None:
        if self._table_size == len(self._pieces):
            return
        self._lengths = np.fromiter(map(len, self._pieces), np.int64, len(self._pieces))
        self._starts = np.cumsum(self._lengths) - self._lengths
        self._flat = np.concatenate(self._pieces)
        self._table_size = len(self._pieces)


def ragged_gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([flat[s:s + n] for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    positions = np.arange(total) + np.repeat(starts - out_starts, lengths)
    return flat[positions]


def merge_flat(
    src: tuple[np.ndarray, np.ndarray],
    trg: tuple[np.ndarray, np.ndarray],
    *,
    seq_len: int,
    sep_token_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`diffuseq.data.dataset.merge_example` for a whole chunk of pairs at once.

    Args:
        src, trg: ``(ids, lengths)`` of the encoded sources and targets (specials included,
            every length ≥ 1), as :meth:`WordMemo.encode_flat` returns.

    Returns:
        ``(ids int32 [T], lengths int64 [N], len_x int32 [N])``: the merged examples back to
        back, ``src'[:a] + [end, sep] + trg'[:b] + [end]`` with ``end`` the source's last id.
    """
    (src_ids, src_len), (trg_ids, trg_len) = src, trg
    if (src_len < 1).any() or (trg_len < 1).any():
        raise ValueError("the tokenizer returned no ids; it must add [CLS]/[SEP]-style specials")
    budget = seq_len - 3
    a, b = src_len - 1, trg_len - 1
    over = a + b > budget
    a, b = (
        np.where(over & (a > b), np.maximum(b, budget - b), a),
        np.where(over & (b > a), np.maximum(a, budget - a), b),
    )
    still = a + b > budget  # equal lengths left, both shrink to half the budget
    a = np.where(still, budget // 2, a)
    b = np.where(still, budget // 2, b)
    src_start = np.cumsum(src_len) - src_len
    trg_start = np.cumsum(trg_len) - trg_len
    end = src_ids[src_start + src_len - 1]  # [N]
    lengths = a + b + 3
    n = len(lengths)
    pair = np.repeat(np.arange(n), lengths)  # [T]
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    a_t, b_t = a[pair], b[pair]
    out = np.empty(len(pos), dtype=np.int32)
    in_src = pos < a_t
    out[in_src] = src_ids[(src_start[pair] + pos)[in_src]]
    in_trg = (pos >= a_t + 2) & (pos < a_t + 2 + b_t)
    out[in_trg] = trg_ids[(trg_start[pair] + pos - a_t - 2)[in_trg]]
    is_end = (pos == a_t) | (pos == a_t + 2 + b_t)
    out[is_end] = end[pair[is_end]]
    out[pos == a_t + 1] = sep_token_id
    return out, lengths.astype(np.int64), (a + 2).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Which tokenizers get a memo
# ----------------------------------------------------------------------------------------------


def word_memo_for(tokenizer) -> WordMemo | None:
    """A :class:`WordMemo` equivalent to ``tokenizer.encode``, or ``None`` if its kind is not
    one the memo is exact for (see the module docstring)."""
    from diffuseq.tokenizers.tokenizer import HFTokenizer
    from diffuseq.tokenizers.word_vocab import VocabFileTokenizer

    if isinstance(tokenizer, VocabFileTokenizer):
        vocab, unk = tokenizer.vocab, tokenizer.unk_token_id
        return WordMemo(
            prefix=[tokenizer.START_ID],
            suffix=[tokenizer.END_ID],
            encode_words=lambda words: [[vocab.get(w, unk)] for w in words],
            split=str.split,
        )
    if isinstance(tokenizer, HFTokenizer):
        return _bert_memo(tokenizer.hf_tokenizer)
    return None


def _bert_memo(hf_tokenizer) -> WordMemo | None:
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    spec = json.loads(backend.to_str())
    kinds = {
        part: (spec.get(part) or {}).get("type")
        for part in ("normalizer", "pre_tokenizer", "model", "post_processor")
    }
    if (
        kinds["normalizer"] not in (None, "BertNormalizer")
        or kinds["pre_tokenizer"] != "BertPreTokenizer"
        or kinds["model"] != "WordPiece"
        or kinds["post_processor"] not in ("BertProcessing", "TemplateProcessing")
    ):
        return None
    if any(re.search(r"\s", token["content"]) for token in spec.get("added_tokens", [])):
        return None
    specials = backend.encode("", add_special_tokens=True).ids  # [CLS] [SEP]
    probe = backend.encode("probe", add_special_tokens=False).ids
    if len(specials) != 2 or backend.encode("probe").ids != [specials[0], *probe, specials[1]]:
        return None

    def encode_words(words: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(words, add_special_tokens=False)]

    return WordMemo(
        prefix=specials[:1],
        suffix=specials[1:],
        encode_words=encode_words,
        split=lambda text: None if _OTHER_SPACE.search(text) else text.split(),
    )
