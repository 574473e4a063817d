"""Data pipeline: jsonl validation, merge-and-mask layout, compact dataset, loaders, demo data."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from diffuseq.data.dataset import (
    MIN_SEQ_LEN,
    Seq2SeqDataset,
    build_dataset,
    infinite_batches,
    make_loader,
    merge_and_mask,
    read_pairs,
    split_file,
    truncated_lengths,
)
from diffuseq.errors import ConfigError, DataError
from diffuseq.tokenizers.tokenizer import load_tokenizer
from tests.conftest import REPO_ROOT


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# read_pairs
# ----------------------------------------------------------------------------------------------


def test_read_pairs_strips_and_ignores_other_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "train.jsonl",
        '{"src": "  a b ", "trg": "\\tc\\n", "id": 7}\n{"trg": "y", "src": "x"}\n',
    )
    assert read_pairs(path) == [("a b", "c"), ("x", "y")]


@pytest.mark.parametrize(
    ("text", "line", "field", "phrase"),
    [
        ('{"src": "a", "trg": "b"}\n{"src": "a", "trg": }\n', 2, None, "invalid JSON"),
        ('{"src": "a", "trg": "b"}\n["a", "b"]\n', 2, None, "got a JSON list"),
        ('{"src": "a", "trg": "b"}\n{"src": "a"}\n', 2, "trg", "missing"),
        ('{"trg": "b"}\n', 1, "src", "missing"),
        ('{"src": "a", "trg": "b"}\n{"src": 3, "trg": "b"}\n', 2, "src", "must be a string"),
        ('{"src": "a", "trg": null}\n', 1, "trg", "must be a string"),
        ('{"src": "a", "trg": "b"}\n\n{"src": "a", "trg": "b"}\n', 2, None, "blank line"),
        ('{"src": "a", "trg": "b"}\n   \n', 2, None, "blank line"),
    ],
)
def test_read_pairs_errors(tmp_path: Path, text: str, line: int, field, phrase: str) -> None:
    path = _write(tmp_path / "valid.jsonl", text)
    with pytest.raises(DataError) as info:
        read_pairs(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert phrase in str(err) and f"line {line}" in str(err)


def test_read_pairs_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_bytes(b'{"src": "a", "trg": "b"}\n{"src": "\xff", "trg": "b"}\n')
    with pytest.raises(DataError, match="line 2.*UTF-8"):
        read_pairs(path)


def test_read_pairs_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty file"):
        read_pairs(_write(tmp_path / "train.jsonl", ""))
    with pytest.raises(DataError, match="'valid' split is read from valid.jsonl in folder"):
        read_pairs(tmp_path / "valid.jsonl")


def test_split_file(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", '{"src": "a", "trg": "b"}\n')
    assert split_file(tmp_path, "train") == tmp_path / "train.jsonl"
    with pytest.raises(DataError, match="'test' split file test.jsonl is missing.*train.jsonl"):
        split_file(tmp_path, "test")
    with pytest.raises(DataError, match="--data_dir"):
        split_file(tmp_path / "nope", "train")
    with pytest.raises(ConfigError, match="train, valid, test"):
        split_file(tmp_path, "dev")


# ----------------------------------------------------------------------------------------------
# merge_and_mask (docs/original.md §3.3)
# ----------------------------------------------------------------------------------------------

CLS, SEP, PAD = 101, 102, 0


def test_merge_and_mask_layout() -> None:
    ids, mask = merge_and_mask(
        [CLS, 7, 8, SEP], [CLS, 9, SEP], seq_len=10, sep_token_id=SEP, pad_token_id=PAD
    )
    assert ids == [CLS, 7, 8, SEP, SEP, CLS, 9, SEP, PAD, PAD]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_merge_and_mask_truncation() -> None:
    src, trg = [CLS, 1, 2, 3, 4, 5, SEP], [CLS, 6, SEP]
    # budget 9 - 3 = 6: src side [CLS] 1..5 (6) + trg [CLS] 6 (2) = 8 -> drop 2 from the source
    ids, mask = merge_and_mask(src, trg, seq_len=9, sep_token_id=SEP, pad_token_id=PAD)
    assert ids == [CLS, 1, 2, 3, SEP, SEP, CLS, 6, SEP]
    assert mask == [0] * 6 + [1] * 3
    # equal lengths shrink together and can end one below the budget
    ids, _ = merge_and_mask(
        [CLS, 1, 2, SEP], [CLS, 3, 4, SEP], seq_len=8, sep_token_id=SEP, pad_token_id=PAD
    )
    assert ids == [CLS, 1, SEP, SEP, CLS, 3, SEP, PAD]


def _original_loop(a: int, b: int, budget: int) -> tuple[int, int]:
    while a + b > budget:
        if a > b:
            a -= 1
        elif b > a:
            b -= 1
        else:
            a, b = a - 1, b - 1
    return a, b


def test_truncated_lengths_matches_original_loop() -> None:
    for a, b, budget in itertools.product(range(1, 16), range(1, 16), range(2, 20)):
        assert truncated_lengths(a, b, budget=budget) == _original_loop(a, b, budget), (a, b)


def test_minimum_seq_len() -> None:
    ids, mask = merge_and_mask(
        [CLS, 1, 2, SEP], [CLS, 3, SEP], seq_len=MIN_SEQ_LEN, sep_token_id=SEP, pad_token_id=PAD
    )
    assert ids == [CLS, SEP, SEP, CLS, SEP] and mask == [0, 0, 0, 1, 1]
    with pytest.raises(ConfigError, match=f"--seq_len {MIN_SEQ_LEN - 1}"):
        merge_and_mask(
            [CLS, SEP], [CLS, SEP], seq_len=MIN_SEQ_LEN - 1, sep_token_id=SEP, pad_token_id=PAD
        )


# ----------------------------------------------------------------------------------------------
# Seq2SeqDataset / build_dataset
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def word_data(tmp_path: Path):
    vocab = _write(tmp_path / "vocab.txt", "".join(f"w{i}\n" for i in range(20)))
    rng = np.random.default_rng(0)
    pairs = [
        (" ".join(f"w{j}" for j in rng.integers(0, 25, rng.integers(0, 12))),
         " ".join(f"w{j}" for j in rng.integers(0, 25, rng.integers(0, 12))))
        for _ in range(37)
    ]  # fmt: skip
    path = _write(
        tmp_path / "train.jsonl", "".join(json.dumps({"src": s, "trg": t}) + "\n" for s, t in pairs)
    )
    return load_tokenizer(str(vocab)), path, pairs


def test_build_dataset_matches_merge_and_mask(word_data) -> None:
    tok, path, pairs = word_data
    seq_len = 16
    dataset = build_dataset(path, tok, seq_len=seq_len, batch_tokenize=5)
    assert len(dataset) == len(pairs)
    for i, (src, trg) in enumerate(pairs):
        (x,), (y,) = tok.encode([src]), tok.encode([trg])
        ids, mask = merge_and_mask(
            x, y, seq_len=seq_len, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id
        )
        item = dataset[i]
        assert item["input_ids"].dtype == torch.int64 and item["input_mask"].dtype == torch.int64
        assert item["input_ids"].tolist() == ids
        assert item["input_mask"].tolist() == mask
    whole = build_dataset(path, tok, seq_len=seq_len)
    assert np.array_equal(whole.token_ids, dataset.token_ids)
    assert np.array_equal(whole.offsets, dataset.offsets)


def test_dataset_batch_indexing(word_data) -> None:
    tok, path, _ = word_data
    dataset = build_dataset(path, tok, seq_len=12)
    rows = [5, 0, 36, -1, 5]
    batch = dataset[rows]
    assert batch["input_ids"].shape == batch["input_mask"].shape == (5, 12)
    for b, row in enumerate(rows):
        item = dataset[row]
        assert torch.equal(batch["input_ids"][b], item["input_ids"])
        assert torch.equal(batch["input_mask"][b], item["input_mask"])
    assert torch.equal(dataset[-1]["input_ids"], dataset[len(dataset) - 1]["input_ids"])


def test_dataset_is_compact(word_data) -> None:
    tok, path, pairs = word_data
    dataset = build_dataset(path, tok, seq_len=64)
    assert dataset.token_ids.dtype == np.int32
    stored = dataset.memory_bytes()
    assert stored == dataset.token_ids.nbytes + dataset.offsets.nbytes + dataset.len_x.nbytes
    padded_int64 = 2 * len(dataset) * 64 * 8  # ids + mask as padded int64 arrays
    assert stored < padded_int64 / 8


def test_build_dataset_rejects_small_seq_len(word_data) -> None:
    tok, path, _ = word_data
    with pytest.raises(ConfigError, match="--seq_len"):
        build_dataset(path, tok, seq_len=3)


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def _index_dataset(n: int) -> Seq2SeqDataset:
    """Example i is [0, 1000 + i, 1, 1, 0, 1]: position 1 of input_ids identifies it."""
    rows = [[0, 1000 + i, 1, 1, 0, 1] for i in range(n)]
    return Seq2SeqDataset(
        token_ids=np.array(rows, dtype=np.int32).ravel(),
        offsets=np.arange(0, 6 * n + 1, 6),
        len_x=np.full(n, 4, dtype=np.int32),
        seq_len=8,
        pad_token_id=3,
    )


def _indices(batch: dict) -> list[int]:
    return (batch["input_ids"][:, 1] - 1000).tolist()


def _epoch(loader: DataLoader) -> list[int]:
    return [i for batch in loader for i in _indices(batch)]


def test_loader_file_order_and_batch_shapes() -> None:
    dataset = _index_dataset(10)
    loader = make_loader(dataset, batch_size=4, shuffle=False, seed=0)
    batches = list(loader)
    assert [len(_indices(b)) for b in batches] == [4, 4, 2]
    assert _epoch(loader) == list(range(10))
    assert batches[0]["input_ids"].shape == (4, 8)
    assert batches[0]["input_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batches[0]["input_ids"][0].tolist() == [0, 1000, 1, 1, 0, 1, 3, 3]


def test_loader_worker_process_gives_same_batches() -> None:
    """DataLoader workers (which run with one torch thread) see the same batches."""
    dataset = _index_dataset(9)
    in_process = make_loader(dataset, batch_size=4, shuffle=True, seed=1)
    with_worker = make_loader(dataset, batch_size=4, shuffle=True, seed=1, num_workers=1)
    assert [_indices(b) for b in with_worker] == [_indices(b) for b in in_process]


@pytest.mark.parametrize("n", [12, 13])
def test_two_ranks_disjoint_and_covering(n: int) -> None:
    dataset = _index_dataset(n)
    shards = [
        _epoch(make_loader(dataset, batch_size=3, shuffle=True, seed=5, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    if n % 2 == 0:
        assert not set(shards[0]) & set(shards[1])
    else:  # the sampler pads by repeating one index, as DistributedSampler does
        assert len(shards[0]) + len(shards[1]) == n + 1


def test_set_epoch_changes_order_deterministically() -> None:
    dataset = _index_dataset(20)

    def first_epochs(seed: int) -> list[list[int]]:
        stream = infinite_batches(make_loader(dataset, batch_size=5, shuffle=True, seed=seed))
        flat = [i for batch in itertools.islice(stream, 12) for i in _indices(batch)]
        return [flat[k : k + 20] for k in range(0, 60, 20)]

    epochs = first_epochs(3)
    assert all(sorted(e) == list(range(20)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert first_epochs(3) == epochs
    assert first_epochs(4)[0] != epochs[0]


def test_fixed_order_repeats_the_first_epoch() -> None:
    """``--fixed_data_order``: the original never called set_epoch, so every epoch is the same."""
    dataset = _index_dataset(20)
    loader = make_loader(dataset, batch_size=5, shuffle=True, seed=3)
    stream = infinite_batches(loader, fixed_order=True)
    flat = [i for batch in itertools.islice(stream, 12) for i in _indices(batch)]
    epochs = [flat[k : k + 20] for k in range(0, 60, 20)]
    assert epochs[0] == epochs[1] == epochs[2] != list(range(20))
    assert sorted(epochs[0]) == list(range(20))


@pytest.mark.parametrize("plain_sampler", [False, True])
def test_resume_fast_forward_matches_uninterrupted(plain_sampler: bool) -> None:
    dataset = _index_dataset(11)

    def loader() -> DataLoader:
        if plain_sampler:
            sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=9)
            return DataLoader(dataset, batch_size=4, sampler=sampler)
        return make_loader(dataset, batch_size=4, shuffle=True, seed=9)

    reference = [_indices(b) for b in itertools.islice(infinite_batches(loader()), 14)]
    for stop in (1, 3, 5, 7):  # 3 batches per epoch: inside and at the end of epochs
        first = infinite_batches(loader())
        head = [_indices(b) for b in itertools.islice(first, stop)]
        state = first.state_dict()
        resumed = infinite_batches(
            loader(), start_epoch=state["epoch"], skip_batches=state["batch_in_epoch"]
        )
        tail = [_indices(b) for b in itertools.islice(resumed, 14 - stop)]
        assert head + tail == reference, stop
        restored = infinite_batches(loader())
        restored.load_state_dict(state)
        assert _indices(next(restored)) == reference[stop]


# ----------------------------------------------------------------------------------------------
# Demo dataset
# ----------------------------------------------------------------------------------------------

DEMO = REPO_ROOT / "datasets" / "demo"
DEMO_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "vocab.txt")


def test_demo_regenerates_byte_identical(tmp_path: Path) -> None:
    import runpy

    module = runpy.run_path(str(REPO_ROOT / "datasets" / "make_demo.py"))
    module["main"](["--out", str(tmp_path)])
    for name in DEMO_FILES:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_demo_is_covered_by_vocab_and_fits_seq_len_32() -> None:
    tok = load_tokenizer(str(DEMO / "vocab.txt"))
    sources: list[set[str]] = []
    for split in ("train", "valid", "test"):
        pairs = read_pairs(split_file(DEMO, split))
        sources.append({src for src, _ in pairs})
        assert len(sources[-1]) == len(pairs)  # no repeated source within a split
        src_ids = tok.encode([s for s, _ in pairs])
        trg_ids = tok.encode([t for _, t in pairs])
        assert all(tok.UNK_ID not in ids for ids in src_ids + trg_ids)
        assert all(6 <= len(ids) <= 14 for ids in src_ids + trg_ids)  # 4-12 words + 2 specials
        assert max(len(x) + len(y) + 1 for x, y in zip(src_ids, trg_ids)) <= 32
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
