"""Reporting of input tokens that became the unknown token (tokenizer_base.UnknownTokens):
training data, decode inputs (``--text``) and the Python API."""

from __future__ import annotations

import json
import logging

import pytest

from diffuseq.cli.decode import main as decode_main
from diffuseq.data.dataset import build_dataset
from diffuseq.decoding import api
from diffuseq.tokenizers.tokenizer import UnknownTokens, VocabFileTokenizer, load_tokenizer
from tests.test_bert_vocab_file import TINY_WORDPIECE
from tests.test_decode import make_run
from tests.train_helpers import make_tiny_data, train_tiny


def test_word_vocab_counts_text_tokens_only(tmp_path):
    (tmp_path / "vocab.txt").write_text("the\ncat\n")
    tok = VocabFileTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    count = UnknownTokens(tok)
    count.add(tok.encode(["the cat sat", "the dog"]))  # sat, dog unknown; [START]/[END] not text
    assert (count.unknown, count.total) == (2, 5)
    assert count.fraction == pytest.approx(0.4)


def test_bert_vocab_counts_pieces(tmp_path):
    path = tmp_path / "bert.txt"
    path.write_text("\n".join(TINY_WORDPIECE) + "\n")
    tok = load_tokenizer(str(path))
    count = UnknownTokens(tok)
    count.add(tok.encode(["Playing games xyz"]))  # play ##ing game ##s [UNK]
    assert (count.unknown, count.total) == (1, 5)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_report_warns_above_the_threshold(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\n")
    tok = VocabFileTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    log = logging.getLogger("test_unknown_tokens")
    log.setLevel(logging.INFO)
    log.addHandler(handler := _Records())
    few, many = UnknownTokens(tok), UnknownTokens(tok)
    few.add(tok.encode(["a " * 200 + "b"]))  # 1 of 201: under 1%
    many.add(tok.encode(["a b"]))
    few.report(log, "few")
    many.report(log, "many")
    log.removeHandler(handler)
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in handler.records]
    assert levels == [("INFO", "few"), ("WARNING", "many")]
    assert "1 of 2 tokens (50.0%)" in handler.records[1].getMessage()


def test_training_data_counts_sources_and_targets(tmp_path):
    (tmp_path / "vocab.txt").write_text("x\ny\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"src": "x z", "trg": "y w w"}) + "\n")
    tok = VocabFileTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    count = UnknownTokens(tok)
    build_dataset(tmp_path / "train.jsonl", tok, seq_len=16, unknown=count)
    assert (count.unknown, count.total) == (3, 5)


def test_training_reports_the_count(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data", n_train=8, n_valid=4)
    with (data / "train.jsonl").open("a") as handle:
        handle.write(json.dumps({"src": "qwertyuiop", "trg": "asdfghjkl"}) + "\n")
    train_tiny(data, learning_steps=1, checkpoint_path=tmp_path / "run", export_model=False)
    err = capsys.readouterr().err
    assert f"training data {data / 'train.jsonl'}: 2 of " in err


def test_decode_text_warns_about_unknown_words(tmp_path, capsys):
    run = make_run(tmp_path / "work")
    code = decode_main(
        ["--model_dir", str(run), "--out_dir", str(tmp_path / "out"),
         "--text", "where is the zebra ?", "--text", "how big"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "WARNING decode inputs: 1 of 7 tokens (14.3%) are not in the vocabulary" in err


def test_api_warns_about_unknown_words(tmp_path):
    gen = api.load(make_run(tmp_path / "work"), device="cpu")
    log = logging.getLogger("diffuseq.api")
    log.addHandler(handler := _Records())
    try:
        gen.generate(["where is the zebra ?"], steps=2, sampler="ddim")
        gen.generate(["where is the cat ?"], steps=2, sampler="ddim")
    finally:
        log.removeHandler(handler)
    messages = [(r.levelname, r.getMessage()) for r in handler.records]
    assert messages[0][0] == "WARNING" and "1 of 5 tokens (20.0%)" in messages[0][1]
    assert all(level != "WARNING" for level, _ in messages[1:])
