"""Golden tests for the data pipeline: G2 (layout, tokenizers, decode) and G9 (run folder data).

Every parameter (seq_len values, file names, vocab, splits) is read from the golden files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffuseq.data.dataset import build_dataset, make_loader, read_pairs, split_file
from diffuseq.tokenizers.tokenizer import load_tokenizer, load_tokenizer_from_run
from tests.conftest import load_golden, skip_missing

G2_FILE = "g2_data_layout.pt"


@pytest.fixture(scope="module")
def g2(golden_dir: Path) -> dict:
    return load_golden(golden_dir, G2_FILE)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, shared_data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    shutil.copy(shared_data_dir / "bert-base-uncased-vocab.txt", folder / "vocab.txt")
    return folder


@pytest.fixture(scope="module")
def g2_tokenizers(g2: dict, golden_dir: Path, bert_folder: Path) -> dict:
    return {
        "bert": load_tokenizer("bert", config_name=str(bert_folder)),
        "custom": load_tokenizer(str(golden_dir / g2["custom"]["vocab_file"])),
    }


def _special_id(name: str, tok, token: str) -> int:
    if name == "custom":
        return tok.vocab[token]
    return tok.hf_tokenizer.convert_tokens_to_ids(token)


@pytest.mark.parametrize("name", ["bert", "custom"])
def test_g2_tokenizer_ids(name: str, g2: dict, g2_tokenizers: dict, golden_dir: Path) -> None:
    case, tok = g2[name], g2_tokenizers[name]
    pairs = read_pairs(golden_dir / case["jsonl_file"])
    assert [list(p) for p in pairs] == case["pairs_stripped"]
    assert tok.encode([src for src, _ in pairs]) == case["encode_src"]
    assert tok.encode([trg for _, trg in pairs]) == case["encode_trg"]
    assert tok.sep_token_id == case["sep_token_id"]
    assert tok.pad_token_id == case["pad_token_id"]
    assert tok.vocab_size == case["vocab_size"]
    for token, expected in case["special_ids"].items():
        assert _special_id(name, tok, token) == expected, token
    if name == "custom":
        assert tok.vocab == case["vocab"]


@pytest.mark.parametrize("name", ["bert", "custom"])
def test_g2_layout_and_decode(name: str, g2: dict, g2_tokenizers: dict, golden_dir: Path) -> None:
    case, tok = g2[name], g2_tokenizers[name]
    assert case["by_seq_len"], "no sequence lengths stored"
    for key, expected in case["by_seq_len"].items():
        seq_len = int(key)
        dataset = build_dataset(golden_dir / case["jsonl_file"], tok, seq_len=seq_len)
        loader = make_loader(dataset, batch_size=len(dataset), shuffle=False, seed=0)
        batch = next(iter(loader))
        assert torch.equal(batch["input_ids"], expected["input_ids"]), seq_len
        assert torch.equal(batch["input_mask"], expected["input_mask"]), seq_len
        len_x = seq_len - batch["input_mask"].sum(dim=1)
        assert torch.equal(len_x, expected["len_x"]), seq_len
        assert torch.equal(torch.from_numpy(dataset.len_x).long(), expected["len_x"])
        ids = batch["input_ids"]
        sources = [tok.decode(row[:n]) for row, n in zip(ids, len_x.tolist())]
        references = [tok.decode(row[n:]) for row, n in zip(ids, len_x.tolist())]
        assert sources == expected["decoded_source_tf446"], seq_len
        assert references == expected["decoded_reference_tf446"], seq_len


def test_g2_bert_folder_forms_agree(g2: dict, bert_folder: Path, golden_dir: Path) -> None:
    """``--vocab FOLDER``, ``--vocab hf:FOLDER`` and ``--vocab bert --config_name FOLDER``."""
    texts = [src for src, _ in read_pairs(golden_dir / g2["bert"]["jsonl_file"])]
    expected = g2["bert"]["encode_src"]
    assert load_tokenizer(str(bert_folder)).encode(texts) == expected
    assert load_tokenizer(f"hf:{bert_folder}").encode(texts) == expected


def test_g2_bert_run_folder_reload(g2: dict, g2_tokenizers: dict, tmp_path: Path) -> None:
    """The tokenizer saved into a run folder reloads without the original folder or the hub."""
    tok = g2_tokenizers["bert"]
    tok.save(tmp_path)
    reloaded = load_tokenizer_from_run(tmp_path, "bert", config_name="bert-base-uncased")
    assert reloaded.encode(g2["bert"]["pairs_stripped"][0]) == tok.encode(
        g2["bert"]["pairs_stripped"][0]
    )
    assert reloaded.vocab_size == tok.vocab_size
    expected = {"sos": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "pad": "[PAD]"}
    assert reloaded.special_tokens == expected


# ----------------------------------------------------------------------------------------------
# G9: the original run folder's data
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def g9(golden_dir: Path) -> dict:
    info_path = golden_dir / "g9_run_info.json"
    if not info_path.exists():
        skip_missing("g9_run_info.json not found")
    root = golden_dir / "g9_run"
    info = json.loads(info_path.read_text())
    run = root / info["run_folder"]
    args = json.loads((run / "training_args.json").read_text())
    return {"root": root, "info": info, "run": run, "args": args}


def test_g9_dataset_files(g9: dict) -> None:
    data_dir = g9["root"] / g9["args"]["data_dir"]
    for split in ("train", "valid", "test"):
        path = split_file(data_dir, split)
        pairs = read_pairs(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(pairs) == len(lines) > 0
        objects = [json.loads(line) for line in lines]
        assert pairs == [(obj["src"].strip(), obj["trg"].strip()) for obj in objects]


def test_g9_tokenizer_from_run_folder(g9: dict, tmp_path: Path) -> None:
    """vocab.json in the run folder = the vocab file; our save writes the same bytes."""
    args, run = g9["args"], g9["run"]
    from_run = load_tokenizer_from_run(run, args["vocab"], config_name=args["config_name"])
    from_file = load_tokenizer(str(g9["root"] / args["vocab"]))
    assert from_run.vocab == from_file.vocab
    assert from_run.vocab_size == args["vocab_size"]
    from_file.save(tmp_path)
    assert (tmp_path / "vocab.json").read_bytes() == (run / "vocab.json").read_bytes()


def test_g9_decode_output_source_and_reference(g9: dict) -> None:
    """Decoding the test split in file order reproduces the original's source/reference."""
    args, info, root = g9["args"], g9["info"], g9["root"]
    tok = load_tokenizer_from_run(g9["run"], args["vocab"], config_name=args["config_name"])
    dataset = build_dataset(
        split_file(root / args["data_dir"], "test"), tok, seq_len=args["seq_len"]
    )
    rows = [json.loads(x) for x in (root / info["decode_output"]).read_text().splitlines()]
    assert len(rows) == info["decode_lines"] == len(dataset)
    for i, row in enumerate(rows):
        item = dataset[i]
        len_x = args["seq_len"] - int(item["input_mask"].sum())
        assert tok.decode(item["input_ids"][:len_x]) == row["source"]
        assert tok.decode(item["input_ids"][len_x:]) == row["reference"]
