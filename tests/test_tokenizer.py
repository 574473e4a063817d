"""Tokenizers: word-level vocab files, Hugging Face folders, learned WordPiece, run folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffuseq.errors import CheckpointError, ConfigError, DataError, OfflineAssetError
from diffuseq.tokenizers.tokenizer import load_tokenizer, load_tokenizer_from_run
from diffuseq.tokenizers.wordpiece import learn_wordpiece_vocab
from tests.conftest import REPO_ROOT


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    return _write(path, "".join(json.dumps({"src": s, "trg": t}) + "\n" for s, t in pairs))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, shared_data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    shutil.copy(shared_data_dir / "bert-base-uncased-vocab.txt", folder / "vocab.txt")
    return folder


# ----------------------------------------------------------------------------------------------
# Word-level vocab file (the original's custom format)
# ----------------------------------------------------------------------------------------------


def test_vocab_file_ids_encode_decode(tmp_path: Path) -> None:
    vocab = _write(tmp_path / "v.txt", "the 10\ncat 4\nplay@@\ning\nun__\nhappy\n")
    tok = load_tokenizer(str(vocab))
    assert tok.vocab == {
        "[START]": 0, "[END]": 1, "[UNK]": 2, "[PAD]": 3,
        "the": 4, "cat": 5, "play@@": 6, "ing": 7, "un__": 8, "happy": 9,
    }  # fmt: skip
    assert (tok.vocab_size, tok.sep_token_id, tok.pad_token_id) == (10, 1, 3)
    assert tok.special_tokens == {"sos": "[START]", "eos": "[END]", "sep": "[END]", "pad": "[PAD]"}
    assert tok.encode(["the  cat\tThe dog", ""]) == [[0, 4, 5, 2, 2, 1], [0, 1]]
    # trailing pads only are stripped; continuation markers are joined
    assert tok.decode([0, 4, 3, 6, 7, 8, 9, 1, 3, 3]) == "[START] the [PAD] playing unhappy [END]"
    assert tok.decode([3, 3]) == ""
    assert tok.decode(tok.encode(["the cat"])[0]) == "[START] the cat [END]"
    assert tok.describe()["kind"] == "vocab_file"


def test_vocab_file_duplicate_is_an_error(tmp_path: Path) -> None:
    vocab = _write(tmp_path / "v.txt", "a\nb\na 3\nc\n")
    with pytest.raises(DataError) as info:
        load_tokenizer(str(vocab))
    assert (info.value.path, info.value.line) == (str(vocab), 3)
    assert "first seen on line 1" in str(info.value)
    assert "allow_duplicate_vocab=True" in str(info.value)


def test_vocab_file_duplicate_reproduces_original(tmp_path: Path) -> None:
    """The original assigns len(dict): the duplicate and the next new token share one id."""
    vocab = _write(tmp_path / "v.txt", "a\nb\na\nc\n")
    tok = load_tokenizer(str(vocab), allow_duplicate_vocab=True)
    assert tok.vocab == {"[START]": 0, "[END]": 1, "[UNK]": 2, "[PAD]": 3, "a": 6, "b": 5, "c": 6}
    assert tok.vocab_size == 7


def test_vocab_file_special_and_blank_duplicates(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="built-in special token"):
        load_tokenizer(str(_write(tmp_path / "s.txt", "a\n[PAD]\n")))
    with pytest.raises(DataError, match="blank line") as info:
        load_tokenizer(str(_write(tmp_path / "b.txt", "a\n\nb\n\n")))
    assert info.value.line == 4


def test_vocab_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocab file not found"):
        load_tokenizer(str(tmp_path / "nope.txt"))


def test_vocab_file_run_folder(tmp_path: Path) -> None:
    """Decoding reads vocab.json from the run folder even when the vocab file is gone."""
    vocab = _write(tmp_path / "v.txt", "x\ny\n")
    run = tmp_path / "run"
    run.mkdir()
    load_tokenizer(str(vocab)).save(run)
    assert json.loads((run / "vocab.json").read_text()) == {
        "[START]": 0, "[END]": 1, "[UNK]": 2, "[PAD]": 3, "x": 4, "y": 5,
    }  # fmt: skip
    vocab.unlink()
    tok = load_tokenizer_from_run(run, str(vocab))
    assert tok.encode(["y x z"]) == [[0, 5, 4, 2, 1]]
    (run / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="vocab.json"):
        load_tokenizer_from_run(run, str(vocab))
    _write(vocab, "x\ny\n")  # falls back to the vocab file if it exists
    assert load_tokenizer_from_run(run, str(vocab)).vocab_size == 6


# ----------------------------------------------------------------------------------------------
# Hugging Face tokenizers
# ----------------------------------------------------------------------------------------------


def test_bert_folder_round_trip(bert_folder: Path) -> None:
    tok = load_tokenizer("bert", config_name=str(bert_folder))
    assert (tok.vocab_size, tok.pad_token_id, tok.sep_token_id) == (30522, 0, 102)
    ids = tok.encode(["Hello, World! It's fine."])[0]
    assert ids[0] == 101 and ids[-1] == 102
    assert tok.decode(ids + [0, 0]) == "[CLS] hello, world! it's fine. [SEP]"
    assert tok.decode([101, 0, 7592, 102, 0]) == "[CLS] [PAD] hello [SEP]"
    assert tok.describe()["kind"] == "hf"


def test_hf_run_folder_outlives_tokenizer_folder(bert_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(bert_folder, folder)
    tok = load_tokenizer(str(folder))
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run)
    shutil.rmtree(folder)
    reloaded = load_tokenizer_from_run(run, str(folder))
    assert reloaded.encode(["Zürich, 2024!"]) == tok.encode(["Zürich, 2024!"])
    assert reloaded.special_tokens == tok.special_tokens


def test_offline_hub_name_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OfflineAssetError) as info:
        load_tokenizer("bert", config_name="diffuseq-tests/no-such-tokenizer")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "no-such-tokenizer" in message and "--config_name" in message
    assert "vocab.txt" in message and "--vocab wordpiece" in message
    with pytest.raises(OfflineAssetError, match="hf:|--vocab"):
        load_tokenizer("hf:diffuseq-tests/no-such-tokenizer")


def test_missing_or_empty_tokenizer_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="folder not found"):
        load_tokenizer(f"hf:{tmp_path / 'missing' / 'folder'}")
    with pytest.raises(ConfigError, match="no usable tokenizer"):
        load_tokenizer(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# WordPiece learned from the training data
# ----------------------------------------------------------------------------------------------

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_COUNTS = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
ALPHABET = ["b", "g", "h", "n", "p", "s", "u"]


def test_learn_wordpiece_vocab_by_hand() -> None:
    """Merges by weighted pair count: ##u##g 20, ##u##n 16, h##ug 15, p##un 12, then the tie
    (hug, ##s) = (p, ##ug) = 5 goes to the smaller pair, then b##un 4."""
    base = [*SPECIALS, *ALPHABET, *("##" + c for c in ALPHABET)]
    merges = ["##ug", "##un", "hug", "pun", "hugs", "pug", "bun"]
    full = learn_wordpiece_vocab(WORD_COUNTS, vocab_size=100, special_tokens=SPECIALS)
    assert full == base + merges
    short = learn_wordpiece_vocab(WORD_COUNTS, vocab_size=len(base) + 4, special_tokens=SPECIALS)
    assert short == base + merges[:4]


@pytest.mark.slow
def test_learn_wordpiece_vocab_independent_of_hash_seed() -> None:
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from diffuseq.tokenizers.wordpiece import learn_wordpiece_vocab\n"
        "import json, sys\n"
        "counts = {w: (len(w) * 7919) % 13 + 1 for w in "
        "'the cat sat on a mat with another cat that ate many mats and hats'.split()}\n"
        "vocab = learn_wordpiece_vocab(counts, vocab_size=60, special_tokens=['[PAD]'])\n"
        "print(json.dumps(vocab))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_wordpiece_train_save_reload(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [("How can I fix a car?", "what is the best way to fix a car ?"),
         ("Where is the red house", "the red house is in the garden"),
         ("is the dog big or small ?", "tell me if the dog is small or big")] * 3,
    )  # fmt: skip
    tok = load_tokenizer("wordpiece", train_files=[str(train)], wordpiece_vocab_size=120)
    again = load_tokenizer("wordpiece", train_files=[str(train)], wordpiece_vocab_size=120)
    assert tok.hf_tokenizer.get_vocab() == again.hf_tokenizer.get_vocab()
    assert (tok.pad_token_id, tok.sep_token_id) == (0, 3)
    assert tok.hf_tokenizer.convert_tokens_to_ids(list(SPECIALS)) == [0, 1, 2, 3, 4]
    assert tok.vocab_size <= 120
    texts = ["how can i fix the red car ?", "Where is the big dog", "zebra!"]
    ids = tok.encode(texts)
    assert tok.decode(ids[0] + [0]) == "[CLS] how can i fix the red car? [SEP]"
    assert tok.decode(ids[1]) == "[CLS] where is the big dog [SEP]"
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run)
    assert (run / "tokenizer.json").is_file()
    reloaded = load_tokenizer_from_run(run, "wordpiece")
    assert reloaded.encode(texts) == ids
    assert reloaded.describe()["kind"] == "wordpiece"
    (run / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer_from_run(run, "wordpiece")


def test_wordpiece_needs_training_files() -> None:
    with pytest.raises(ConfigError, match="training data"):
        load_tokenizer("wordpiece")
