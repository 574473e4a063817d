"""Text files the toolkit reads: a UTF-8 byte order mark is not text, an empty vocabulary is an
error (issue: wrong numbers without a warning)."""

from __future__ import annotations

import pytest

from diffuseq.cli.evaluate import main as evaluate_main
from diffuseq.errors import DataError
from diffuseq.tokenizers.tokenizer import load_tokenizer
from diffuseq.tokenizers.word_vocab import VocabFileTokenizer
from tests.test_bert_vocab_file import TINY_WORDPIECE

BOM = "\ufeff"


def _bleu(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("avg BLEU score"))
    return float(line.split()[-1])


def test_hypothesis_file_with_a_bom_scores_like_without(tmp_path, capsys):
    text = "how do i learn python ?\nwhat is love ?\n"
    hyp, ref = tmp_path / "h.txt", tmp_path / "r.txt"
    hyp.write_text(BOM + text, encoding="utf-8")
    ref.write_text(text, encoding="utf-8")
    assert evaluate_main(["--hyp", str(hyp), "--ref", str(ref)]) == 0
    assert _bleu(capsys.readouterr().out) == 1.0  # identical texts (0.6687 with the BOM kept)


def test_word_vocab_file_with_a_bom_keeps_its_first_word(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text(BOM + "how\nold\nare\nyou\n", encoding="utf-8")
    tok = VocabFileTokenizer.from_vocab_file(path)
    ids = tok.encode(["how old are you"])[0]
    assert tok.unk_token_id not in ids
    assert tok.vocab["how"] == len(VocabFileTokenizer.SPECIALS)


@pytest.mark.parametrize("content", ["", "\n", BOM])
def test_an_empty_word_vocab_is_rejected(tmp_path, content):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="holds no word"):
        VocabFileTokenizer.from_vocab_file(path)


def test_bert_vocab_file_with_a_bom_is_recognised_and_keeps_pad(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text(BOM + "\n".join(TINY_WORDPIECE) + "\n", encoding="utf-8")
    tok = load_tokenizer(str(path))
    assert tok.vocab_size == len(TINY_WORDPIECE)
    assert tok.pad_token_id == 0 and tok.sep_token_id == 3
    assert tok.encode(["how old are you ?"])[0][1:-1] == [5, 6, 7, 8, 9]
