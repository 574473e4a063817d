"""Text metrics of the DiffuSeq evaluator, reimplemented fast and bit-exact (docs/original.md §7).

Reimplements the metric functions of ``scripts/eval_seq2seq.py`` (docs/original.md §7.1-§7.3) as pure
functions on lists of strings:

* clean-up: ``.strip()`` first, then plain substring deletions (:func:`clean_text`);
* sentence BLEU = nltk 3.10.4 ``sentence_bleu([ref.split()], hyp.split(),
  smoothing_function=SmoothingFunction().method4)``. :func:`bleu_from_counts` repeats nltk's
  float operations in nltk's order (``m/d`` for ``Fraction(m, d)``, method4's
  ``1 / (2**k * 5 / log(len))`` divided by the denominator, ``math.fsum`` of ``0.25 * log``,
  ``bp * exp``), so the values are bit-identical; only the n-gram counting is faster
  (counts are computed once per sentence and shared by every pair it takes part in);
* ROUGE-L F = torchmetrics 1.9.0 ``ROUGEScore`` ``rougeL_fmeasure``: lower-case, non-alphanumerics
  to spaces, whitespace tokens, LCS-based F in float64, rounded to float32 by ``tensor(...)``;
* dist-n per sentence, div-4 pooled over a candidate set, self-BLEU (the original's asymmetric
  ``i < j`` version and a symmetric one), MBR selection, corpus BLEU via sacrebleu (extra);
* BERTScore F1 through ``bert_score`` with an offline check (:class:`BertScorer`).

The ``reference_*`` functions call nltk / torchmetrics directly; tests and the benchmark use
them as the ground truth.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np

from diffuseq.errors import ConfigError, OfflineAssetError, first_sentence

METHOD4_K = 5  # nltk SmoothingFunction(k=5)
DEFAULT_BERTSCORE_MODEL = "microsoft/deberta-xlarge-mnli"
DEFAULT_BERTSCORE_LAYER = 40  # bert_score's model2layers entry for the default model
_NON_ALNUM = re.compile(r"[^a-z0-9]+")  # torchmetrics' default ROUGE normaliser

NgramCounts = tuple[set, ...]  # BLEU-4: per order 1..4, the n-grams (repeats as (ngram, k))
BleuMatrix = list[list[float]]


def clean_text(text: str, *, remove: Sequence[str]) -> str:
    """``text.strip()``, then delete every occurrence of each string in ``remove``, in order.

    Spaces left by the deletions are kept, as in the original (``"[CLS] hi [SEP]"`` -> ``" hi "``).
    """
    text = text.strip()
    for token in remove:
        text = text.replace(token, "")
    return text


# ----------------------------------------------------------------------------- BLEU


def ngram_counts(tokens: Sequence[str]) -> NgramCounts:
    """The 1..4-grams of ``tokens`` as multisets: one set per order.

    An n-gram's first occurrence is the element ``ngram``, its k-th repeat ``(ngram, k)``; so the
    size of the intersection of two such sets is ``sum_g min(c_a(g), c_b(g))`` (C set code).
    """
    shifted = [tokens[i:] for i in range(4)]
    counts = []
    for n in range(1, 5):
        grams = list(zip(*shifted[:n], strict=False))  # stops at the shortest: len - n + 1 grams
        bag = set(grams)
        if len(bag) < len(grams):  # repeated n-grams
            seen: dict[tuple[str, ...], int] = {}
            for gram in grams:
                k = seen[gram] = seen.get(gram, -1) + 1
                if k:
                    bag.add((gram, k))
        counts.append(bag)
    return tuple(counts)


def clipped_matches(hyp: NgramCounts, ref: NgramCounts) -> tuple[int, ...]:
    """nltk's clipped n-gram matches ``sum_g min(c_hyp(g), c_ref(g))`` per order (symmetric)."""
    return tuple(len(h & r) for h, r in zip(hyp, ref, strict=True))


def bleu_from_counts(hyp_len: int, ref_len: int, matches: Sequence[int]) -> float:
    """nltk 3.10.4 ``sentence_bleu`` (one reference, weights 1/4, method4) from counts.

    Args:
        hyp_len: number of hypothesis tokens. ref_len: number of reference tokens.
        matches: clipped matches for orders 1..4.
    Returns:
        the BLEU value, computed with the same float operations in the same order as nltk
        (``0`` when there is no unigram match, like nltk's integer ``0``).
    """
    if matches[0] == 0:
        return 0
    brevity = 1 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    log_terms = []
    smoothing_step = 1
    for order, matched in enumerate(matches):
        denominator = max(1, hyp_len - order)
        if matched:
            precision = matched / denominator
        elif hyp_len > 1:  # method4: 1 / (2^k * K / ln(len)) / denominator
            precision = 1 / (2**smoothing_step * METHOD4_K / math.log(hyp_len)) / denominator
            smoothing_step += 1
        else:  # precision 0 is skipped by nltk's ``if p_i > 0``
            continue
        log_terms.append(0.25 * math.log(precision))
    return brevity * math.exp(math.fsum(log_terms))


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """BLEU of one hypothesis vs one reference (whitespace tokens), by :func:`bleu_from_counts`."""
    hyp, ref = hypothesis.split(), reference.split()
    return bleu_from_counts(
        len(hyp), len(ref), clipped_matches(ngram_counts(hyp), ngram_counts(ref))
    )


def sentence_bleu_many(
    hypotheses: Sequence[str], references: Sequence[str], *, reference_impl: bool = False
) -> list[float]:
    """Sentence BLEU of each (hypothesis, reference) pair; ``reference_impl`` calls nltk."""
    score = reference_sentence_bleu if reference_impl else sentence_bleu
    return [score(h, r) for h, r in zip(hypotheses, references, strict=True)]


def pairwise_bleu(
    candidates: Sequence[str], *, reference_impl: bool = False, memo: dict | None = None
) -> BleuMatrix:
    """``S[i][j] = BLEU(hyp=candidates[i], ref=candidates[j])`` with a zero diagonal (docs/original.md §7.3).

    Each candidate's n-grams are counted once; clipped matches are symmetric, so they are
    computed once per unordered pair and used for both directions. ``memo`` (optional, owned by
    the caller) keeps :func:`bleu_from_counts` results across calls: the value depends only on
    the two lengths and the four match counts, which repeat a lot between similar candidates.
    """
    memo = {} if memo is None else memo
    k = len(candidates)
    matrix: BleuMatrix = [[0] * k for _ in range(k)]
    if reference_impl:
        for i in range(k):
            for j in range(k):
                if i != j:
                    matrix[i][j] = reference_sentence_bleu(candidates[i], candidates[j])
        return matrix
    tokens = [c.split() for c in candidates]
    counts_of: dict[str, NgramCounts] = {}  # identical candidates share their counts
    for text, toks in zip(candidates, tokens, strict=True):
        if text not in counts_of:
            counts_of[text] = ngram_counts(toks)
    counts = [counts_of[text] for text in candidates]
    for i in range(k):
        for j in range(i + 1, k):
            matches = clipped_matches(counts[i], counts[j])
            for a, b in ((i, j), (j, i)):
                key = (len(tokens[a]), len(tokens[b]), *matches)
                if key not in memo:
                    memo[key] = bleu_from_counts(key[0], key[1], matches)
                matrix[a][b] = memo[key]
    return matrix


def pairwise_bleu_many(
    groups: Sequence[Sequence[str]], *, reference_impl: bool = False
) -> list[BleuMatrix]:
    """:func:`pairwise_bleu` of every candidate group (a picklable unit of work for a pool)."""
    memo: dict = {}
    return [pairwise_bleu(g, reference_impl=reference_impl, memo=memo) for g in groups]


def mbr_select(matrix: BleuMatrix) -> int:
    """Index of the candidate with the highest summed BLEU against the others (first on ties).

    Uses ``np.argmax(np.sum(S, -1))`` on the zero-diagonal matrix exactly as the original, so
    ties broken by float rounding of the row sums go the same way.
    """
    return int(np.argmax(np.sum(np.asarray(matrix, dtype=np.float64), -1)))


def self_bleu(matrix: BleuMatrix) -> np.float64:
    """The original's self-BLEU: mean of ``S[i][j]`` over ``i < j`` (0 if fewer than 2)."""
    pairs = [row[j] for i, row in enumerate(matrix) for j in range(i + 1, len(row))]
    return np.mean(pairs or [0])


def self_bleu_symmetric(matrix: BleuMatrix) -> np.float64:
    """Self-BLEU over both directions: mean of ``S[i][j]`` over ``i != j`` (0 if fewer than 2)."""
    pairs = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j]
    return np.mean(pairs or [0])


def corpus_bleu_sacrebleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) by sacrebleu, default 13a tokenizer (an extra, not in the paper)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def reference_sentence_bleu(hypothesis: str, reference: str) -> float:
    """The original's ``get_bleu``: nltk ``sentence_bleu`` with ``SmoothingFunction().method4``."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    return nltk_sentence_bleu(
        [reference.split()], hypothesis.split(), smoothing_function=SmoothingFunction().method4
    )


# ----------------------------------------------------------------------------- ROUGE-L


def rouge_tokens(text: str) -> list[str]:
    """torchmetrics' default ROUGE tokens: lower-case, non-``[a-z0-9]`` runs to spaces, split."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Hyyrö 2004; exact integer)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        matched = row & masks.get(token, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


def rouge_l_fmeasure(hypothesis: str, reference: str) -> float:
    """ROUGE-L F of torchmetrics 1.9.0 in float64 (before its float32 rounding)."""
    pred, target = rouge_tokens(hypothesis), rouge_tokens(reference)
    if not pred or not target:
        return 0.0
    lcs = lcs_length(pred, target)
    precision, recall = lcs / len(pred), lcs / len(target)
    if precision == recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def rouge_l_many(
    hypotheses: Sequence[str], references: Sequence[str], *, reference_impl: bool = False
) -> list[float]:
    """``rougeL_fmeasure`` of each pair as the original keeps it (a float32 value as a float)."""
    if reference_impl:
        return reference_rouge_l_many(hypotheses, references)
    values = [rouge_l_fmeasure(h, r) for h, r in zip(hypotheses, references, strict=True)]
    return np.asarray(values, dtype=np.float64).astype(np.float32).tolist()


def reference_rouge_l_many(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """The original's loop: one ``ROUGEScore`` module called per pair, ``rougeL_fmeasure.tolist()``.

    Only the ``rougeL`` key is requested: the default key set includes ``rougeLsum``, which needs
    nltk's ``punkt_tab`` download; the ``rougeL`` value is the same either way.
    """
    from torchmetrics.text.rouge import ROUGEScore

    scorer = ROUGEScore(rouge_keys=("rougeL",))
    pairs = zip(hypotheses, references, strict=True)
    return [scorer(h, r)["rougeL_fmeasure"].tolist() for h, r in pairs]


# ----------------------------------------------------------------------------- diversity


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int) -> float:
    """dist-n of one sentence: distinct / total n-grams of ``text.split()`` (0 if none)."""
    grams = _ngrams(text.split(), n)
    return len(set(grams)) / len(grams) if grams else 0


def distinct_n_pooled(texts: Sequence[str], n: int) -> float:
    """div-n of a candidate set: distinct / total n-grams pooled over the sentences (0 if none)."""
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0


def length_with_empties(text: str) -> int:
    """The original's ``avg len`` unit: ``len(text.split(' '))``, empty strings counted."""
    return len(text.split(" "))


# ----------------------------------------------------------------------------- BERTScore


def resolve_local_model(name_or_path: str) -> str:
    """A local folder for a BERTScore model, without network access.

    Returns ``name_or_path`` if it is a folder, else its snapshot in the Hugging Face cache.
    Raises:
        OfflineAssetError: the model is neither a folder nor in the local cache.
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.isfile(name_or_path):
        raise ConfigError(
            f"--bertscore_model {name_or_path} is a file; pass the model's folder (with "
            "config.json, the tokenizer and the weights)"
        )
    if _looks_local(name_or_path):
        raise ConfigError(
            f"--bertscore_model {name_or_path}: no such folder; pass an existing local model "
            "folder, a hub name in the local Hugging Face cache, or --no_bertscore"
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=name_or_path, local_files_only=True)
    except Exception as err:  # not cached, or not a valid repo id
        raise OfflineAssetError(
            f"BERTScore model '{name_or_path}' is not available offline ({type(err).__name__}). "
            f"Download it once where there is internet (`hf download {name_or_path}`), "
            "or pass --bertscore_model /path/to/local/model with --bertscore_layer N, "
            "or use --no_bertscore."
        ) from err


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``owner/name``): absolute, ``./``, ``~`` or more than one
    ``/``."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def default_bertscore_layer(model_name: str) -> int | None:
    """bert_score's tuned layer for a known hub model name (``None`` if unknown)."""
    from bert_score.utils import model2layers

    return model2layers.get(model_name)


def _adapt_tokenizer_for_bert_score(tokenizer, *, max_length: int | None) -> None:
    """Make one tokenizer instance work with bert_score 0.3.x under transformers 5.

    * bert_score truncates at ``model_max_length``; a tokenizer saved without it reports 1e30,
      which the Rust tokenizers reject: cap it at the model's position limit.
    * bert_score encodes an empty sentence as ``build_inputs_with_special_tokens([])``, which
      transformers 5 removed; give the instance that method for the empty case (its v4 result:
      the special tokens only, e.g. ``[CLS] [SEP]``).
    """
    if max_length and tokenizer.model_max_length > max_length:
        tokenizer.model_max_length = max_length
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):

        def specials_only(ids: list[int]) -> list[int]:
            assert not ids, "bert_score only calls this for empty sentences"
            return tokenizer.encode("", add_special_tokens=True)

        tokenizer.build_inputs_with_special_tokens = specials_only


class BertScorer:
    """BERTScore F1 (bert_score, ``idf=False``, no rescaling) with a model from local files.

    The model is located when the scorer is made (so a missing model fails fast) and loaded on
    the first call (after any process pool has been forked). ``scorer(hypotheses, references)``
    returns ``(mean F1 as float, str(torch.mean(F1)))``; the string is what the original prints
    after ``avg berscore`` (e.g. ``tensor(0.8069)``).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_BERTSCORE_MODEL,
        layer: int | None = None,
        batch_size: int = 64,
        verbose: bool = True,
    ):
        self.path = resolve_local_model(model)
        if layer is None:
            known = model == DEFAULT_BERTSCORE_MODEL
            layer = DEFAULT_BERTSCORE_LAYER if known else default_bertscore_layer(model)
        if layer is None:
            raise ConfigError(
                f"no default BERTScore layer is known for '{model}'; pass --bertscore_layer N"
            )
        self.model, self.layer, self.batch_size, self.verbose = model, layer, batch_size, verbose
        self._scorer = None

    def _load(self):
        from bert_score import BERTScorer

        try:
            scorer = BERTScorer(
                model_type=self.path, num_layers=self.layer, lang="en", batch_size=self.batch_size
            )
        except Exception as err:  # OSError, ValueError, UnpicklingError, RuntimeError, ...
            text = str(err)
            reason = (
                "its weights file is corrupt or holds objects other than tensors, so a "
                "weights-only load refused it"
                if text.startswith("Weights only load failed")
                else f"{type(err).__name__}: {first_sentence(text) or 'no details'}"
            )
            raise OfflineAssetError(
                f"cannot load the BERTScore model from '{self.path}' ({reason}); pass another "
                "--bertscore_model folder or --no_bertscore"
            ) from None
        limit = getattr(scorer._model.config, "max_position_embeddings", None)
        _adapt_tokenizer_for_bert_score(scorer._tokenizer, max_length=limit)
        return scorer

    def __call__(self, hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
        import torch

        if self._scorer is None:
            self._scorer = self._load()
        _, _, f1 = self._scorer.score(list(hypotheses), list(references), verbose=self.verbose)
        mean = torch.mean(f1)
        return float(mean), str(mean)
