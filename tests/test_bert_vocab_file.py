"""A BERT WordPiece vocab.txt given as a file to --vocab is a BERT tokenizer (offline BERT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffuseq.tokenizers.tokenizer import (
    is_bert_vocab_file,
    load_tokenizer,
    load_tokenizer_from_run,
)
from tests.train_helpers import DEMO_DIR, make_tiny_data, train_tiny

TINY_WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "how", "old", "are", "you", "?",
                  "play", "##ing", "##s", "the", "game"]  # fmt: skip


@pytest.fixture
def wordpiece_file(tmp_path) -> Path:
    path = tmp_path / "my-bert-vocab.txt"  # any name: recognised by its content
    path.write_text("\n".join(TINY_WORDPIECE) + "\n", encoding="utf-8")
    return path


def test_recognised_by_special_tokens_and_pieces(wordpiece_file, tmp_path):
    assert is_bert_vocab_file(wordpiece_file)
    assert not is_bert_vocab_file(DEMO_DIR / "vocab.txt")  # the original's word-level format
    no_pieces = tmp_path / "words.txt"
    no_pieces.write_text("\n".join(t for t in TINY_WORDPIECE if not t.startswith("##")) + "\n")
    assert not is_bert_vocab_file(no_pieces)


def test_tiny_wordpiece_file_tokenizes_as_bert(wordpiece_file):
    tok = load_tokenizer(str(wordpiece_file))
    assert tok.vocab_size == len(TINY_WORDPIECE)
    ids = tok.encode(["How old are you ?", "Playing games xyz"])
    index = {t: i for i, t in enumerate(TINY_WORDPIECE)}
    assert ids[0] == [index[t] for t in ("[CLS]", "how", "old", "are", "you", "?", "[SEP]")]
    # lower-cased, split into WordPiece pieces, unknown words -> [UNK]
    assert ids[1] == [index[t] for t in ("[CLS]", "play", "##ing", "game", "##s", "[UNK]", "[SEP]")]
    assert tok.pad_token_id == 0 and tok.sep_token_id == 3
    assert tok.special_tokens == {"sos": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "pad": "[PAD]"}


def test_cased_vocabulary_is_not_lower_cased(tmp_path):
    path = tmp_path / "cased.txt"
    path.write_text("\n".join([*TINY_WORDPIECE, "How"]) + "\n")
    ids = load_tokenizer(str(path)).encode(["How how"])[0]
    assert ids[1:3] == [len(TINY_WORDPIECE), TINY_WORDPIECE.index("how")]


def test_training_with_a_bert_vocab_file_saves_the_tokenizer(wordpiece_file, tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train_tiny(data, vocab=str(wordpiece_file), learning_steps=1, save_interval=1,
               checkpoint_path=run, export_model=False)  # fmt: skip
    wordpiece_file.unlink()  # decoding reads the copy saved in the run folder
    again = load_tokenizer_from_run(run, str(wordpiece_file))
    assert again.encode(["playing the game"]) == [[2, 10, 11, 13, 14, 3]]


def test_bert_base_uncased_vocab_file(shared_data_dir):
    path = shared_data_dir / "bert-base-uncased-vocab.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    tok = load_tokenizer(str(path))
    assert tok.vocab_size == len(lines) == 30522
    ids = tok.encode(["How can I learn Python quickly?"])[0]
    pieces = ["[CLS]", "how", "can", "i", "learn", "python", "quickly", "?", "[SEP]"]
    assert ids == [lines.index(p) for p in pieces]
    assert ids[0] == 101 and ids[-1] == 102
