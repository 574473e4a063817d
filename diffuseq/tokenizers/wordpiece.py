"""Deterministic WordPiece vocabulary learning for ``--vocab wordpiece``.

The ``tokenizers`` library does the normalisation, pre-tokenisation, the WordPiece model and
decoding; only the vocabulary learner is ours, because the library's ``WordPieceTrainer`` breaks
ties by hash-map iteration order, so two runs (or two ranks) on the same data can learn different
vocabularies. Every rank must build the identical tokenizer.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_backend(texts: Iterable[str], *, vocab_size: int = 8000) -> Any:
    """Learn an uncased BERT-style WordPiece tokenizer from ``texts``, deterministically.

    Normalisation, pre-tokenisation and the WordPiece model come from the ``tokenizers``
    library (BERT normaliser and pre-tokeniser, ``##`` continuation prefix, ``[CLS] $A [SEP]``
    post-processor). The vocabulary itself is learned by :func:`learn_wordpiece_vocab`, a
    frequency-based merge learner like ``tokenizers.trainers.WordPieceTrainer`` but with a fixed
    tie-break: the library trainer orders ties by hash-map iteration, so two runs (or two ranks)
    on the same data can produce different vocabularies.

    Returns a ``tokenizers.Tokenizer``.

    Args:
        texts: training strings (sources and targets).
        vocab_size: target size including the specials ``[PAD]=0 [UNK] [CLS] [SEP] [MASK]``;
            smaller if the data has fewer merges, larger if the alphabet alone exceeds it.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    tokens = learn_wordpiece_vocab(counts, vocab_size=vocab_size, special_tokens=WORDPIECE_SPECIALS)

    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tokens.index("[CLS]")), ("[SEP]", tokens.index("[SEP]"))],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int], *, vocab_size: int, special_tokens: Sequence[str]
) -> list[str]:
    """Frequency-based WordPiece vocabulary learning (BPE merges with a ``##`` prefix).

    Each word starts as ``[w0, ##w1, ##w2, …]``. The most frequent adjacent pair (weighted by
    word count) is merged repeatedly; ties go to the lexicographically smallest pair. Merged
    tokens are appended until ``vocab_size`` is reached or nothing is left to merge.

    Args:
        word_counts: pre-tokenised word → count.
        vocab_size: target vocabulary size, specials included.
        special_tokens: tokens placed first, in order (ids 0, 1, …).

    Returns:
        The vocabulary in id order: specials, the alphabet, ``##`` + alphabet, then merges.
    """
    words = sorted(word_counts)
    freqs = [word_counts[w] for w in words]
    symbols = [[w[0], *("##" + c for c in w[1:])] for w in words]
    alphabet = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*special_tokens, *alphabet, *("##" + c for c in alphabet)]))
    known = set(vocab)

    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # may hold stale word indices
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_count[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, a, b) for (a, b), count in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg_count, a, b = heapq.heappop(heap)
        if pair_count.get((a, b), 0) != -neg_count:
            continue  # stale heap entry
        merged = a + b[2:]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        delta: Counter[tuple[str, str]] = Counter()
        for i in sorted(where.pop((a, b))):
            old, new = symbols[i], _merge_pair(symbols[i], a, b, merged)
            for pair in zip(old, old[1:]):
                delta[pair] -= freqs[i]
            for pair in zip(new, new[1:]):
                delta[pair] += freqs[i]
                where[pair].add(i)
            symbols[i] = new
        for pair in sorted(p for p, d in delta.items() if d):
            pair_count[pair] += delta[pair]
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
            else:
                del pair_count[pair]
    return vocab


def _merge_pair(symbols: list[str], a: str, b: str, merged: str) -> list[str]:
    """Replace every non-overlapping adjacent ``(a, b)`` in ``symbols``, left to right."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out
