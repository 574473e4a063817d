"""Evaluator metrics (docs/original.md §7) on hand-checked strings; bit-exactness vs nltk and torchmetrics."""

from __future__ import annotations

import math
import random

import pytest

from diffuseq.errors import OfflineAssetError
from diffuseq.evaluation import metrics


def test_clean_text_strips_first_then_deletes():
    # strip() happens before deletion, so the spaces around the special tokens stay
    specials = ("[SEP]", "[CLS]", "[PAD]")
    assert metrics.clean_text("  [CLS] hi there [SEP] [PAD] ", remove=specials) == " hi there  "
    assert metrics.clean_text("[CLS] [SEP]", remove=("[SEP]", "[CLS]")) == " "


def test_bleu_exact_match_and_brevity_penalty():
    assert metrics.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # hyp "a b c d" (4 tokens) vs ref "a b c d e" (5): all precisions 1, BP = exp(1 - 5/4)
    assert metrics.sentence_bleu("a b c d", "a b c d e") == math.exp(
        1 - 5 / 4
    )  # 0.7788007830714049
    # longer hypothesis: BP = 1; p = 4/5, 3/4, 2/3, 1/2 -> (0.2)^(1/4) = 0.668740...
    assert metrics.sentence_bleu("a b c d e", "a b c d") == pytest.approx(0.2**0.25, abs=1e-15)


def test_bleu_method4_smoothing_by_hand():
    # hyp "a b x d" vs ref "a b c d": p1 = 3/4, p2 = 1/3 (only "a b"), p3 = 0/2, p4 = 0/1.
    # method4 replaces the zeros by 1 / (2^k * 5 / ln 4) / denominator with k = 1, 2:
    # p3 = ln4 / 10 / 2 = 0.0693..., p4 = ln4 / 20 / 1 = 0.0693...; BP = 1.
    p3 = math.log(4) / 10 / 2
    p4 = math.log(4) / 20
    expected = (0.75 * (1 / 3) * p3 * p4) ** 0.25  # = (0.25 * 0.0693147^2)^(1/4) = 0.186165
    assert metrics.sentence_bleu("a b x d", "a b c d") == pytest.approx(expected, abs=1e-15)
    assert metrics.sentence_bleu("a b x d", "a b c d") == pytest.approx(0.186165, abs=1e-6)


def test_bleu_degenerate_cases():
    # one-word hypothesis: only p1 = 1/1 counts (no smoothing for length 1), BP = exp(1 - 3/1)
    assert metrics.sentence_bleu("a", "a b c") == math.exp(-2)  # 0.1353352832366127
    assert metrics.sentence_bleu("", "a b c") == 0  # empty hypothesis
    assert metrics.sentence_bleu("x y", "a b c") == 0  # no unigram match -> nltk's integer 0
    assert metrics.sentence_bleu("a b", "") == 0


def _random_text(rng: random.Random) -> str:
    vocab = "a b c the of is what how why Café x? y! A B 1 2 [UNK] foo-bar".split()
    n = rng.choice([0, 1, 2, 3, 4, 5, 7, 12])
    pad = " " if rng.random() < 0.5 else ""
    return pad + " ".join(rng.choice(vocab) for _ in range(n)) + pad


def test_bleu_bit_identical_to_nltk_on_random_strings():
    rng = random.Random(0)
    pairs = [(_random_text(rng), _random_text(rng)) for _ in range(500)]
    hyps, refs = zip(*pairs, strict=True)
    fast = metrics.sentence_bleu_many(hyps, refs)
    nltk = metrics.sentence_bleu_many(hyps, refs, reference_impl=True)
    assert [(type(v), v) for v in fast] == [(type(v), v) for v in nltk]
    assert sum(v > 0 for v in fast) > 100  # the sample exercises non-trivial values


def test_rouge_l_by_hand():
    # torchmetrics' docstring pair: tokens "my name is john" / "is your name john", LCS 2 -> F 0.5
    assert metrics.rouge_l_many(["My name is John"], ["Is your name John"]) == [0.5]
    # punctuation -> spaces, lower-case: [the, cat, sat] vs [the, cat, sat, on, the, mat]:
    # LCS 3, P = 1, R = 0.5, F = 2/3, stored as float32 like tensor(...).tolist()
    value = metrics.rouge_l_many(["The cat, sat!"], ["the cat sat on the mat"])[0]
    assert value == 0.6666666865348816
    assert metrics.rouge_l_fmeasure("The cat, sat!", "the cat sat on the mat") == 2 / 3
    # non-ASCII letters are not alphanumeric for the normaliser: "Café" -> "caf"
    assert metrics.rouge_tokens("Café au-lait") == ["caf", "au", "lait"]
    assert metrics.rouge_l_many(["  "], ["a b"]) == [0.0]


def test_lcs_length_matches_dynamic_programming():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                same = a[i - 1] == b[j - 1]
                table[i][j] = (
                    table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
                )
        assert metrics.lcs_length(a, b) == table[-1][-1]


def test_rouge_l_equal_to_torchmetrics_on_random_strings():
    rng = random.Random(2)
    pairs = [(_random_text(rng), _random_text(rng)) for _ in range(150)]
    hyps, refs = zip(*pairs, strict=True)
    assert metrics.rouge_l_many(hyps, refs) == metrics.rouge_l_many(hyps, refs, reference_impl=True)


def test_distinct_and_div4_by_hand():
    assert metrics.distinct_n("a a b", 1) == 2 / 3
    assert metrics.distinct_n("   ", 1) == 0
    assert metrics.distinct_n("a b a b", 2) == 2 / 3  # ab, ba, ab
    # pooled 4-grams: "a b c d", "b c d e" from the first, "a b c d" from the second -> 2 / 3
    assert metrics.distinct_n_pooled(["a b c d e", "a b c d"], 4) == 2 / 3
    assert metrics.distinct_n_pooled(["a b", "c"], 4) == 0
    assert metrics.length_with_empties(" a  b ") == 5  # ['', 'a', '', 'b', '']


def test_self_bleu_original_and_symmetric():
    cands = ["a b c d", "a b c d e"]
    matrix = metrics.pairwise_bleu(cands)
    forward = math.exp(1 - 5 / 4)  # BLEU(hyp="a b c d", ref="a b c d e") = 0.7788...
    backward = 0.2**0.25  # BLEU(hyp="a b c d e", ref="a b c d") = 0.6687...
    assert matrix[0][0] == matrix[1][1] == 0
    assert matrix[0][1] == forward and matrix[1][0] == pytest.approx(backward, abs=1e-15)
    assert metrics.self_bleu(matrix) == forward  # the original uses only i < j
    assert metrics.self_bleu_symmetric(matrix) == pytest.approx((forward + backward) / 2, abs=1e-15)
    assert metrics.self_bleu(metrics.pairwise_bleu(["a b"])) == 0


def test_pairwise_bleu_equals_nltk_loop():
    rng = random.Random(3)
    for _ in range(20):
        group = [_random_text(rng) for _ in range(rng.randint(1, 5))]
        assert metrics.pairwise_bleu(group) == metrics.pairwise_bleu(group, reference_impl=True)


def test_mbr_select_first_on_ties_and_consensus():
    # two identical candidates score 1.0 against each other: a tie, the first wins
    assert metrics.mbr_select(metrics.pairwise_bleu(["a b c d", "a b c d", "x y z w"])) == 0
    # the candidate closest to both others wins
    cands = ["x y z w", "a b c d e", "a b c d", "a b c"]
    matrix = metrics.pairwise_bleu(cands)
    sums = [sum(row) for row in matrix]
    assert metrics.mbr_select(matrix) == sums.index(max(sums)) == 2


def test_corpus_bleu_sacrebleu():
    same = metrics.corpus_bleu_sacrebleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx(100.0, abs=1e-9)  # sacrebleu gives 100.00000000000004
    assert metrics.corpus_bleu_sacrebleu(["a b"], ["c d"]) == 0.0


def test_resolve_local_model_offline_error(tmp_path):
    assert metrics.resolve_local_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(OfflineAssetError, match="not available offline"):
        metrics.resolve_local_model("diffuseq-tests/no-such-model")
