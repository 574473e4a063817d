"""The tokenization cache (--data_cache, diffuseq/data/cache.py) and its fast build
(diffuseq/tokenizers/word_memo.py): identical ids and arrays to the uncached path on both tokenizer kinds,
reuse, rebuild on every change of its key, corrupt entries, errors, bit-identical training
(also across a resume) and a 2-process launch where rank 1 maps what rank 0 built."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffuseq.cli.train import build_parser, main
from diffuseq.data import cache as data_cache
from diffuseq.data.cache import cache_root, load_split
from diffuseq.data.dataset import build_dataset, iter_pairs, merge_example
from diffuseq.errors import ConfigError, DataError
from diffuseq.store.checkpoint import load_state_file
from diffuseq.tokenizers.tokenizer import UnknownTokens, load_tokenizer, train_wordpiece
from diffuseq.tokenizers.word_memo import flatten, merge_flat, word_memo_for
from tests.conftest import shared_dir, skip_missing
from tests.train_helpers import (
    DEMO_DIR,
    REPO_ROOT,
    assert_same,
    make_tiny_data,
    run_command,
    subprocess_env,
    tiny_argv,
    train_tiny,
)

#: Texts where splitting at white space first could go wrong: punctuation, accents, CJK, final
#: sigma, characters BERT's clean-up deletes (VT, FF, U+001F, U+0085), other Unicode spaces,
#: specials written in the text, a word over WordPiece's 100 characters, unknown words.
TRICKY = [
    "Héllo,  wörld!\tTAB\nnew line  don't",
    "join\x0bme and\x0cme, un\x1fit \x85x",
    "a\xa0b c\u2003d e\u3000f",
    "中文字 and 日本語テキスト",
    "ΣΊΣΥΦΟΣ σας ΣΑΣ",
    "[SEP] hi[CLS]x [MASK]",
    "x" * 150,
    "qzxv blorptastic zzyzx",
    "",
]


def _bert_vocab() -> Path:
    path = shared_dir() / "data" / "bert-base-uncased-vocab.txt"
    if not path.is_file():
        skip_missing(f"BERT vocabulary {path}")
    return path


@pytest.fixture(params=["word", "bert", "wordpiece"])
def tokenizer(request):
    """The word-level demo vocab, BERT's vocab.txt, a WordPiece vocabulary learned here."""
    if request.param == "word":
        return load_tokenizer(str(DEMO_DIR / "vocab.txt"))
    if request.param == "wordpiece":
        texts = [text for pair in iter_pairs(DEMO_DIR / "valid.jsonl") for text in pair]
        return train_wordpiece(texts, vocab_size=300)
    return load_tokenizer(str(_bert_vocab()))


@pytest.fixture
def data(tmp_path):
    return make_tiny_data(tmp_path / "data", n_train=200)


def _arrays(dataset) -> dict[str, np.ndarray]:
    return {key: np.asarray(getattr(dataset, key)) for key in ("token_ids", "offsets", "len_x")}


def _assert_same_arrays(a, b) -> None:
    for key, value in _arrays(a).items():
        other = _arrays(b)[key]
        assert value.dtype == other.dtype and np.array_equal(value, other), key


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


class _CountBuilds:
    """Counts the entries built (wraps data_cache.build_entry)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        real = data_cache.build_entry

        def counting(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(data_cache, "build_entry", counting)


# ------------------------------------------------------------------------- identical ids


def test_memo_gives_the_tokenizers_ids(tokenizer):
    """Word by word, each word once: exactly tokenizer.encode on the demo data and TRICKY."""
    memo = word_memo_for(tokenizer)
    assert memo is not None
    texts = [text for pair in iter_pairs(DEMO_DIR / "train.jsonl") for text in pair][:4000]
    texts += TRICKY
    ref_ids, ref_lengths = flatten(tokenizer.encode(texts))
    for chunk in (texts[:1000], texts[1000:]):  # the second chunk reuses the memo
        ids, lengths = memo.encode_flat(chunk)
        expected = flatten(tokenizer.encode(chunk))
        assert np.array_equal(ids, expected[0]) and np.array_equal(lengths, expected[1])
    ids, lengths = memo.encode_flat(texts)
    assert np.array_equal(ids, ref_ids) and np.array_equal(lengths, ref_lengths)
    assert 100 < memo.words < len(texts)  # words are tokenized once, not once per text


def test_no_memo_for_other_tokenizers():
    """A byte-level BPE (spaces belong to its tokens) gets no memo: the cache uses encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from diffuseq.tokenizers.tokenizer import HFTokenizer

    backend = Tokenizer(models.BPE({"a": 0, "[SEP]": 1, "[PAD]": 2}, [], unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, sep_token="[SEP]", pad_token="[PAD]"
    )
    assert word_memo_for(HFTokenizer(wrapped)) is None


@pytest.mark.parametrize("seq_len", [5, 6, 9, 24, 128])
def test_merge_flat_is_merge_example(seq_len):
    rng = np.random.default_rng(seq_len)
    pairs = [
        (list(rng.integers(5, 99, size=rng.integers(2, 40))), list(rng.integers(5, 99, size=k)))
        for k in rng.integers(2, 40, size=300)
    ]
    merged = [merge_example(x, y, seq_len=seq_len, sep_token_id=1) for x, y in pairs]
    src, trg = flatten([x for x, _ in pairs]), flatten([y for _, y in pairs])
    ids, lengths, len_x = merge_flat(src, trg, seq_len=seq_len, sep_token_id=1)
    assert np.array_equal(ids, np.concatenate([m for m, _ in merged]))
    assert lengths.tolist() == [len(m) for m, _ in merged]
    assert len_x.tolist() == [n for _, n in merged]


def test_cached_split_equals_the_uncached_build(tmp_path, data, tokenizer):
    (data / "train.jsonl").write_text(
        (data / "train.jsonl").read_text()
        + "".join(
            json.dumps({"src": t, "trg": TRICKY[-1 - i]}) + "\n" for i, t in enumerate(TRICKY)
        )
    )
    for seq_len in (5, 24, 128):
        counts = [UnknownTokens(tokenizer), UnknownTokens(tokenizer)]
        path = data / "train.jsonl"
        plain = build_dataset(path, tokenizer, seq_len=seq_len, unknown=counts[0])
        cache = str(tmp_path / "cache")
        cached = load_split(path, tokenizer, seq_len=seq_len, cache=cache, unknown=counts[1])
        _assert_same_arrays(plain, cached)
        assert isinstance(cached.token_ids.base, np.memmap)  # mapped, not loaded
        assert (counts[0].unknown, counts[0].total) == (counts[1].unknown, counts[1].total)
        assert counts[0].total > 0
        again = UnknownTokens(tokenizer)  # a relaunch reports the same counts from the entry
        load_split(path, tokenizer, seq_len=seq_len, cache=cache, unknown=again)
        assert (again.unknown, again.total) == (counts[0].unknown, counts[0].total)


# ------------------------------------------------------------------------- reuse and rebuild


def test_reused_when_nothing_changed(tmp_path, data, monkeypatch):
    tok = load_tokenizer(str(data / "vocab.txt"))
    builds = _CountBuilds(monkeypatch)
    cache = tmp_path / "cache"
    first = load_split(data / "train.jsonl", tok, seq_len=24, cache=str(cache))
    (entry,) = _entries(cache)
    stamp = (entry / "token_ids.npy").stat().st_mtime_ns
    second = load_split(data / "train.jsonl", tok, seq_len=24, cache=str(cache))
    assert builds.count == 1
    assert _entries(cache) == [entry] and (entry / "token_ids.npy").stat().st_mtime_ns == stamp
    _assert_same_arrays(first, second)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["examples"] == 200 and meta["file"]["size"] == (data / "train.jsonl").stat().st_size
    assert entry.name.startswith("train-")


def _changed(path: Path, how: str) -> None:
    stat = path.stat()
    if how == "content, same size and mtime":
        text = path.read_text()
        swapped = text.replace("a", "\x00").replace("e", "a").replace("\x00", "e")
        assert swapped != text and len(swapped) == len(text)
        path.write_text(swapped)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only the bytes differ
    else:  # the same bytes, touched
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.parametrize("how", ["content, same size and mtime", "mtime"])
def test_rebuilt_when_the_file_changes(tmp_path, data, monkeypatch, how):
    tok = load_tokenizer(str(data / "vocab.txt"))
    builds = _CountBuilds(monkeypatch)
    cache, path = str(tmp_path / "cache"), data / "train.jsonl"
    before = load_split(path, tok, seq_len=24, cache=cache)
    _changed(path, how)
    after = load_split(path, tok, seq_len=24, cache=cache)
    assert builds.count == 2 and len(_entries(tmp_path / "cache")) == 2
    _assert_same_arrays(after, build_dataset(path, tok, seq_len=24))
    if how == "mtime":
        _assert_same_arrays(before, after)
    else:
        assert not np.array_equal(before.token_ids, after.token_ids)
    load_split(path, tok, seq_len=24, cache=cache)
    assert builds.count == 2  # and the new entry is reused


def test_rebuilt_when_the_tokenizer_or_seq_len_changes(tmp_path, data, monkeypatch):
    path, cache = data / "train.jsonl", str(tmp_path / "cache")
    builds = _CountBuilds(monkeypatch)
    tok = load_tokenizer(str(data / "vocab.txt"))
    load_split(path, tok, seq_len=24, cache=cache)
    load_split(path, tok, seq_len=32, cache=cache)
    assert builds.count == 2
    lines = (data / "vocab.txt").read_text().splitlines()
    smaller = tmp_path / "smaller_vocab.txt"
    smaller.write_text("\n".join(lines[:-5]) + "\n")  # five words fewer: other ids
    other = load_tokenizer(str(smaller))
    assert other.fingerprint() != tok.fingerprint()
    dataset = load_split(path, other, seq_len=24, cache=cache)
    assert builds.count == 3
    _assert_same_arrays(dataset, build_dataset(path, other, seq_len=24))
    bert = load_tokenizer(str(_bert_vocab()))
    load_split(path, bert, seq_len=24, cache=cache)
    assert builds.count == 4 and len(_entries(tmp_path / "cache")) == 4
    load_split(path, load_tokenizer(str(data / "vocab.txt")), seq_len=24, cache=cache)
    assert builds.count == 4  # a tokenizer loaded again from the same file: the same entry


def test_off_builds_in_memory_and_writes_nothing(tmp_path, data, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tok = load_tokenizer(str(data / "vocab.txt"))
    dataset = load_split(data / "train.jsonl", tok, seq_len=24, cache="off")
    assert not isinstance(dataset.token_ids.base, np.memmap)
    assert not (tmp_path / "xdg").exists()
    assert cache_root("off") is None


def test_auto_is_under_the_user_cache_folder(tmp_path, data, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("auto") == tmp_path / "xdg" / "diffuseq" / "data"
    tok = load_tokenizer(str(data / "vocab.txt"))
    load_split(data / "train.jsonl", tok, seq_len=24, cache="auto")
    assert len(_entries(tmp_path / "xdg" / "diffuseq" / "data")) == 1
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root("auto") == tmp_path / "home" / ".cache" / "diffuseq" / "data"
    assert cache_root("~/mine") == tmp_path / "home" / "mine"


# ------------------------------------------------------------------------- damage and errors


def _rewrite(entry: Path, name: str, change) -> None:
    """Rewrite array ``name`` of an entry (same shape and dtype) with ``change(array)``."""
    array = np.load(entry / f"{name}.npy").copy()
    change(array)
    np.save(entry / f"{name}.npy", array)


def _set(name: str, index: int, value: int):
    def change(array: np.ndarray) -> None:
        array[index] = value

    return lambda entry: _rewrite(entry, name, change)


def _reverse_offsets(array: np.ndarray) -> None:
    array[1:-1] = array[1:-1][::-1].copy()  # same values, no longer increasing


def _meta(**changes):
    def write(entry: Path) -> None:
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, **changes}))

    return write


#: Content damage that keeps every shape and dtype (what the shape checks cannot see).
CONTENT_DAMAGE = {
    "an example longer than seq_len": _set("offsets", 1, 1000),
    "a negative source length": _set("len_x", 0, -5),
    "a source longer than its example": _set("len_x", 0, 1000),
    "an id beyond the vocabulary": _set("token_ids", 3, 99999),
    "shuffled offsets": lambda entry: _rewrite(entry, "offsets", _reverse_offsets),
    "meta.json is a list": lambda entry: (entry / "meta.json").write_text("[1, 2]"),
    "meta.json counts are not integers": _meta(unknown_tokens="x"),
}


@pytest.mark.parametrize("damage", list(CONTENT_DAMAGE))
def test_damaged_contents_are_detected_and_rebuilt(tmp_path, data, monkeypatch, damage):
    tok = load_tokenizer(str(data / "vocab.txt"))
    builds = _CountBuilds(monkeypatch)
    cache, path = str(tmp_path / "cache"), data / "train.jsonl"
    load_split(path, tok, seq_len=24, cache=cache)
    (entry,) = _entries(tmp_path / "cache")
    CONTENT_DAMAGE[damage](entry)
    dataset = load_split(path, tok, seq_len=24, cache=cache)
    assert builds.count == 2 and _entries(tmp_path / "cache") == [entry]
    _assert_same_arrays(dataset, build_dataset(path, tok, seq_len=24))


@pytest.mark.parametrize("damage", ["truncated array", "no meta.json", "bad meta.json"])
def test_a_damaged_entry_is_rebuilt(tmp_path, data, monkeypatch, damage):
    tok = load_tokenizer(str(data / "vocab.txt"))
    builds = _CountBuilds(monkeypatch)
    cache, path = str(tmp_path / "cache"), data / "train.jsonl"
    load_split(path, tok, seq_len=24, cache=cache)
    (entry,) = _entries(tmp_path / "cache")
    if damage == "truncated array":
        ids = entry / "token_ids.npy"
        ids.write_bytes(ids.read_bytes()[:-40])
    elif damage == "no meta.json":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text("{")
    dataset = load_split(path, tok, seq_len=24, cache=cache)
    assert builds.count == 2 and _entries(tmp_path / "cache") == [entry]
    _assert_same_arrays(dataset, build_dataset(path, tok, seq_len=24))


def test_an_unwritable_cache_folder_is_named(tmp_path, data):
    tok = load_tokenizer(str(data / "vocab.txt"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a path under a file cannot be created, even as root
    with pytest.raises(ConfigError) as err:
        load_split(data / "train.jsonl", tok, seq_len=24, cache=str(blocker / "cache"))
    message = str(err.value)
    assert str(blocker / "cache") in message and "--data_cache" in message and "off" in message


def test_a_bad_line_leaves_no_entry(tmp_path, data):
    tok = load_tokenizer(str(data / "vocab.txt"))
    path = data / "train.jsonl"
    path.write_text(path.read_text() + '{"src": "x"}\n')
    with pytest.raises(DataError, match=r"line 201.*trg"):
        load_split(path, tok, seq_len=24, cache=str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []  # nor a temporary folder


def test_cli_flag_and_bad_cache_message(tmp_path, data, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = tiny_argv(data, learning_steps=1, checkpoint_path=tmp_path / "run")
    assert main(argv + ["--data_cache", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "--data_cache" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing created before the data is ready
    help_text = " ".join(build_parser().format_help().split())
    assert "--data_cache auto|off|DIR" in help_text and "(default: 'auto')" in help_text


# ------------------------------------------------------------------------- training


def _train(data: Path, run: Path, cache: str, **flags) -> dict:
    train_tiny(data, checkpoint_path=run, data_cache=cache, export_model=False, **flags)
    steps = flags.get("learning_steps", 8)
    return load_state_file(run / f"state_{steps:06d}.pt")


def _same_training(a: dict, b: dict) -> None:
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)


def test_training_on_cached_data_is_bit_identical(tmp_path, data):
    """Uncached, cached (first launch builds), cached again (a relaunch maps): the same
    weights, EMA, optimizer, sampler and data position after 8 steps; and a run resumed at
    step 4 from the cache ends exactly where the uncached uninterrupted run ends."""
    cache = str(tmp_path / "cache")
    reference = _train(data, tmp_path / "off", "off")
    _same_training(reference, _train(data, tmp_path / "built", cache))
    _same_training(reference, _train(data, tmp_path / "mapped", cache))
    assert len(_entries(tmp_path / "cache")) == 2  # train and valid
    run = tmp_path / "resumed"  # the cached run's folder as it was after step 4
    shutil.copytree(tmp_path / "built", run)
    for late in run.glob("*000008*"):
        late.unlink()
    argv = ["--resume_checkpoint", str(run / "state_000004.pt"), "--learning_steps", "8"]
    assert main([*argv, "--progress", "false", "--data_cache", cache]) == 0
    resumed = load_state_file(run / "state_000008.pt")
    _same_training(reference, resumed)
    assert resumed["step"] == 8


@pytest.mark.slow
def test_two_processes_map_what_rank0_built(tmp_path):
    """torchrun, 2 gloo processes: rank 0 builds each split once, rank 1 maps the same files;
    both see the rows an uncached 2-process run sees."""
    data = make_tiny_data(tmp_path / "data", n_train=48)
    cache = tmp_path / "cache"
    seen = {}
    for name, setting in (("cached", str(cache)), ("off", "off")):
        out = tmp_path / f"out_{name}"
        out.mkdir()
        argv = tiny_argv(data, learning_steps=4, bsz=8, save_interval=4, diff_steps=100,
                         data_cache=setting, checkpoint_path=tmp_path / f"run_{name}")  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(REPO_ROOT / "tests" / "dist_probe.py"), str(out), *argv]  # fmt: skip
        done = run_command(cmd, cwd=tmp_path, env=subprocess_env(), timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        seen[name] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    entries = _entries(cache)
    assert [p.name.split("-")[0] for p in entries] == ["train", "valid"]
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    mapped = [r["mapped"] for r in seen["cached"]]
    assert mapped[0] == mapped[1] == str(entries[0] / "token_ids.npy")
    assert [r["mapped"] for r in seen["off"]] == [None, None]
    for cached, plain in zip(seen["cached"], seen["off"]):
        assert cached["rows"] == plain["rows"] and len(cached["rows"]) == 4 * 8
        assert_same(cached["model"], plain["model"], "model")
