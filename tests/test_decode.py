"""End-to-end tests of the decode job (decoding.py, run_folder.py, api.py, cli/decode.py).

A tiny run folder (random weights, T = 10) is written in the layout of our trainer; the
original's run folder is golden G9. Every test runs in a second or two on one CPU thread.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from diffuseq.cli.decode import main
from diffuseq.config import DataConfig, DecodeConfig, DiffusionConfig, ModelConfig, RunConfig
from diffuseq.decoding import api
from diffuseq.decoding.job import cut_at_sep, samples_dir_name
from diffuseq.store.checkpoint_format import state_dict_for_saving
from diffuseq.store.run_folder import open_run
from diffuseq.tokenizers.tokenizer import VocabFileTokenizer
from tests.conftest import tiny_denoiser

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "is",
    "big",
    "small",
    "red",
    "where",
    "what",
    "how",
    "can",
    "i",
    "find",
    "old",
    "you",
    "are",
    "?",
    ".",
]
PAIRS = [
    ("where is the cat ?", "the cat is where ?"),
    ("what is big", "big is what"),
    ("how old are you ?", "you are old ?"),
    ("the dog is small .", "a small dog ."),
    ("can i find a red cat", "find a red cat"),
]
T = 10
RUN_NAME = "diffuseq_tiny_h8_lr0.0001_t10_sqrt_uniform_seed102_test"


def make_run(root: Path, *, learned_mean_embed: bool = False, denoise: bool = False) -> Path:
    """``root/diffusion_models/<run>`` as our trainer writes it, with relative data/vocab paths
    (relative to ``root``, the directory training ran in) and two EMA checkpoints."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (data / "test.jsonl").write_text(
        "".join(json.dumps({"src": s, "trg": t}) + "\n" for s, t in PAIRS)
    )
    tokenizer = VocabFileTokenizer.from_vocab_file(root / "vocab.txt")
    model_config = ModelConfig(
        hidden_dim=8,
        hidden_t_dim=8,
        dropout=0.0,
        config_name="bert-base-uncased",
        num_layers=1,
        num_heads=2,
        bert_hidden_size=16,
        intermediate_size=32,
        learned_mean_embed=learned_mean_embed,
        vocab_size=tokenizer.vocab_size,
    )
    config = RunConfig(
        model=model_config,
        diffusion=DiffusionConfig(
            diffusion_steps=T, noise_schedule="sqrt", denoise=denoise, denoise_rate=0.5
        ),
        data=DataConfig(dataset="tiny", data_dir="data", seq_len=16, vocab="vocab.txt"),
    )
    run = root / "diffusion_models" / RUN_NAME
    run.mkdir(parents=True)
    config.save_yaml(run / "config.yaml")
    tokenizer.save(run)
    model = tiny_denoiser(
        vocab_size=tokenizer.vocab_size, seed=0, learned_mean_embed=learned_mean_embed
    )
    for step in (5, 10):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        torch.save(state_dict_for_saving(model), run / f"ema_0.9999_{step:06d}.pt")
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "work")


def _decode(run: Path, out: Path, *extra: str) -> int:
    return main(["--model_dir", str(run), "--out_dir", str(out), *extra])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _folder(out: Path, name: str = "ema_0.9999_000010.pt.samples") -> Path:
    return out / RUN_NAME / name


# ------------------------------------------------------------------------------ output format


def test_default_decode_layout_and_texts(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--seed", "123") == 0
    path = _folder(out) / "seed123_step0.json"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == [
        path.relative_to(out).as_posix()
    ]
    raw = path.read_text().splitlines()
    assert len(raw) == len(PAIRS)
    records = [json.loads(line) for line in raw]
    for line, record, (src, trg) in zip(raw, records, PAIRS):
        assert list(record) == ["recover", "reference", "source"]
        assert line == json.dumps(record)  # json.dumps defaults (ASCII escapes, ", " separators)
        assert record["source"] == f"[START] {src} [END] [END]"
        assert record["reference"] == f"[START] {trg} [END]"
        assert len(record["recover"].split()) >= 1
    # a re-run overwrites; --append appends (the original)
    assert _decode(run_dir, out, "--seed", "123") == 0
    assert path.read_text().splitlines() == raw
    assert _decode(run_dir, out, "--seed", "123", "--append") == 0
    assert path.read_text().splitlines() == raw + raw


def test_checkpoint_all_newest_first_and_note(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--checkpoint", "all", "--note", "v2") == 0
    found = sorted(p.relative_to(out / RUN_NAME).as_posix() for p in out.rglob("*.json"))
    assert found == [
        "ema_0.9999_000005.pt.samples/seed101_step0_v2.json",
        "ema_0.9999_000010.pt.samples/seed101_step0_v2.json",
    ]
    assert [p.name for p in open_run(run_dir).checkpoints()] == [
        "ema_0.9999_000010.pt",
        "ema_0.9999_000005.pt",
    ]


@pytest.mark.parametrize(
    "flags, folder",
    [
        (
            ["--sampler", "dpm-solver++", "--step", "3"],
            "ema_0.9999_000010.pt.samples-dpm-solver++-3steps",
        ),
        (
            ["--sampler", "dpm-solver++", "--step", "3", "--dpm_v2_variant"],
            "ema_0.9999_000010.pt.samples-dpm-solver++-v2-3steps",
        ),
        (["--step", "4"], "ema_0.9999_000010.pt.samples-ddim-4steps"),
        (
            ["--sampler", "ddim", "--step", "4", "--ddim_adjacent"],
            "ema_0.9999_000010.pt.samples-ddim-adjacent-4steps",
        ),
        (["--sampler", "ddim", "--step", str(T)], f"ema_0.9999_000010.pt.samples-ddim-{T}steps"),
    ],
)
def test_fast_samplers_write_their_own_folder(run_dir, tmp_path, flags, folder):
    out = tmp_path / "out"
    assert _decode(run_dir, out, *flags) == 0
    assert len(_lines(_folder(out, folder) / "seed101_step0.json")) == len(PAIRS)


def test_cut_at_sep(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out) == 0
    assert _decode(run_dir, tmp_path / "clean", "--cut_at_sep") == 0
    plain = _lines(_folder(out) / "seed101_step0.json")
    clean = _lines(_folder(tmp_path / "clean") / "seed101_step0.json")
    specials = {"sos": "[START]", "eos": "[END]", "sep": "[END]", "pad": "[PAD]"}
    for p, c, (src, trg) in zip(plain, clean, PAIRS):
        assert c == {k: cut_at_sep(v, specials) for k, v in p.items()}
        assert c["source"] == src and c["reference"] == trg
    assert (
        cut_at_sep(
            "[CLS] hello [PAD] world [SEP] junk",
            {"sos": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "pad": "[PAD]"},
        )
        == "hello world"
    )


def test_adhoc_inputs(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--text", "where is the dog ?", "--text", "how big") == 0
    lines = _lines(_folder(out, "ema_0.9999_000010.pt.samples-text") / "seed101_step0.json")
    assert [r["source"] for r in lines] == [
        "[START] where is the dog ? [END] [END]",
        "[START] how big [END] [END]",
    ]
    assert [r["reference"] for r in lines] == ["[START] [END]"] * 2
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"src": "what is red"}\n{"src": "the cat", "trg": "a cat"}\n')
    assert _decode(run_dir, out, "--input", str(jsonl)) == 0
    lines = _lines(_folder(out, "ema_0.9999_000010.pt.samples-input-mine") / "seed101_step0.json")
    assert [r["reference"] for r in lines] == ["[START] [END]", "[START] a cat [END]"]


def test_text_prints_sources_and_candidates(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert _decode(run_dir, out, "--text", "where is the dog ?", "--text", "how big",
                   "--num_samples", "2", "--seed", "5") == 0  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    folder = _folder(out, "ema_0.9999_000010.pt.samples-text")
    seed5, seed6 = _lines(folder / "seed5_step0.json"), _lines(folder / "seed6_step0.json")
    specials = {"sos": "[START]", "eos": "[END]", "sep": "[END]", "pad": "[PAD]"}
    assert printed == [  # without the special tokens, cut at the first [END] (the files keep them)
        line
        for a, b in zip(seed5, seed6)
        for line in (
            f"source: {cut_at_sep(a['source'], specials)}",
            f"  seed5: {cut_at_sep(a['recover'], specials)}",
            f"  seed6: {cut_at_sep(b['recover'], specials)}",
        )
    ]
    assert printed[0] == "source: where is the dog ?"
    assert seed5[0]["source"] == "[START] where is the dog ? [END] [END]"
    assert not any(token in line for line in printed for token in specials.values())


# ------------------------------------------------------------------------------ reproducibility


def test_num_samples_equals_single_runs_and_batch_size_independent(run_dir, tmp_path):
    out_k, out_1 = tmp_path / "k", tmp_path / "single"
    assert _decode(run_dir, out_k, "--seed", "7", "--num_samples", "3", "--bsz", "4") == 0
    for k in range(3):
        assert _decode(run_dir, out_1, "--seed", str(7 + k), "--bsz", "2") == 0
        name = f"seed{7 + k}_step0.json"
        assert (_folder(out_k) / name).read_text() == (_folder(out_1) / name).read_text()
    texts = [(_folder(out_k) / f"seed{7 + k}_step0.json").read_text() for k in range(3)]
    assert len(set(texts)) == 3  # the candidates differ


def test_api_matches_cli(run_dir, tmp_path):
    out = tmp_path / "out"
    assert (
        _decode(run_dir, out, "--sampler", "dpm-solver++", "--step", "3", "--num_samples", "2") == 0
    )
    gen = api.load(run_dir, device="cpu")
    assert gen.checkpoint.name == "ema_0.9999_000010.pt"
    sources = [s for s, _ in PAIRS]
    raw = gen.generate_raw(
        sources,
        references=[t for _, t in PAIRS],
        sampler="dpm-solver++",
        steps=3,
        num_samples=2,
        seed=101,
    )
    config = DecodeConfig(sampler="dpm-solver++", steps=3, num_samples=2)
    assert gen.generate_raw(sources, config, references=[t for _, t in PAIRS]) == raw
    with pytest.raises(TypeError, match="stepz"):
        gen.generate_raw(sources, stepz=3)
    folder = _folder(out, "ema_0.9999_000010.pt.samples-dpm-solver++-3steps")
    for k in range(2):
        assert [r[k] for r in raw] == _lines(folder / f"seed{101 + k}_step0.json")
    clean = gen.generate(sources, sampler="dpm-solver++", steps=3, num_samples=2, seed=101)
    assert len(clean) == len(sources) and all(len(c) == 2 for c in clean)
    assert all("[" not in text for c in clean for text in c)


def test_bf16_autocast_runs(run_dir):
    gen = api.load(run_dir, device="cpu", dtype="bf16")
    out = gen.generate_raw(["where is the cat ?"], steps=3, sampler="ddim")
    assert out[0][0]["source"] == "[START] where is the cat ? [END] [END]"


def test_v2_run_decodes(tmp_path):
    """A v2 run (learned μ, discrete noise) decodes with every sampler."""
    run = make_run(tmp_path / "v2", learned_mean_embed=True, denoise=True)
    out = tmp_path / "out"
    for flags in (
        [],
        ["--sampler", "ddim", "--step", "3"],
        ["--sampler", "dpm-solver++", "--step", "3"],
    ):
        assert _decode(run, out, *flags) == 0
    assert len(list(out.rglob("*.json"))) == 3


def test_decode_run_written_by_our_trainer(tmp_path, monkeypatch):
    """A run folder written by run_train.py (config.yaml, vocab.json, EMA and state files) decodes;
    the full training states are not picked up by the default --pattern ema."""
    from diffuseq.cli.train import main as train_main

    root = make_run(tmp_path / "work").parent.parent  # reuse its data/ and vocab.txt
    (root / "data" / "train.jsonl").write_text((root / "data" / "test.jsonl").read_text() * 4)
    (root / "data" / "valid.jsonl").write_text((root / "data" / "test.jsonl").read_text())
    monkeypatch.chdir(root)
    flags = {
        "dataset": "tiny",
        "data_dir": "data",
        "vocab": "vocab.txt",
        "hidden_dim": 8,
        "hidden_t_dim": 8,
        "bert_hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 16,
        "seq_len": 16,
        "diff_steps": 6,
        "bsz": 4,
        "microbatch": 4,
        "learning_steps": 2,
        "save_interval": 2,
        "log_interval": 1,
        "eval_interval": 100,
        "checkpoint_path": "diffusion_models/ours",
        "progress": "false",
    }
    assert train_main([x for k, v in flags.items() for x in (f"--{k}", str(v))]) == 0
    out = tmp_path / "out"
    assert (
        main(["--model_dir", "diffusion_models/ours", "--out_dir", str(out), "--num_samples", "2"])
        == 0
    )
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert files == [
        "ours/ema_0.9999_000002.pt.samples/seed101_step0.json",
        "ours/ema_0.9999_000002.pt.samples/seed102_step0.json",
    ]
    lines = _lines(out / files[0])
    assert [r["source"] for r in lines] == [f"[START] {s} [END] [END]" for s, _ in PAIRS]


# ------------------------------------------------------------------------------ G9: the original's run folder


def test_g9_original_run_folder(golden_dir, tmp_path):
    """Decoding the original's run folder gives its path layout, line count, keys, references
    and sources (the recover text depends on the original's RNG stream: format only)."""
    info = json.loads((golden_dir / "g9_run_info.json").read_text())
    decode_args = shlex.split(info["decode_command"])

    def arg(name: str) -> str:
        return decode_args[decode_args.index(name) + 1]

    ckpt = Path(arg("--model_path"))
    g9 = golden_dir / "g9_run"
    expected_file = g9 / info["decode_output"]  # relative to g9_run/, like every path in the file
    out = tmp_path / "generation_outputs"
    assert (
        main(
            [
                "--model_dir",
                str(g9 / ckpt.parent),
                "--seed",
                arg("--seed2"),
                "--split",
                arg("--split"),
                "--bsz",
                arg("--batch_size"),
                "--out_dir",
                str(out),
                "--step",
                arg("--step"),
            ]
        )
        == 0
    )
    ours = sorted(p.relative_to(out) for p in out.rglob("*.json"))
    assert ours == [expected_file.relative_to(g9 / "generation_outputs")]
    theirs = _lines(expected_file)
    mine = _lines(out / ours[0])
    assert len(mine) == len(theirs) == info["decode_lines"]
    for a, b in zip(mine, theirs):
        assert list(a) == list(b) == ["recover", "reference", "source"]
        assert (a["reference"], a["source"]) == (b["reference"], b["source"])
    # the original's paths are relative to g9_run/ (run_dir/../..), wherever the copy lives; without the
    # vocab file the run folder's vocab.json suffices
    copy = tmp_path / "copy"
    shutil.copytree(g9, copy, ignore=shutil.ignore_patterns("generation_outputs"))
    (copy / json.loads((copy / ckpt.parent / "training_args.json").read_text())["vocab"]).unlink()
    run = open_run(copy / ckpt.parent)
    assert Path(run.config.model.config_name).is_dir() and Path(run.config.data.data_dir).is_dir()
    out2 = tmp_path / "again"
    assert (
        main(
            [
                "--model_dir",
                str(copy / ckpt.parent),
                "--seed",
                arg("--seed2"),
                "--bsz",
                "3",
                "--out_dir",
                str(out2),
            ]
        )
        == 0
    )
    assert (out2 / ours[0]).read_text() == (out / ours[0]).read_text()  # also: bsz-independent


# ------------------------------------------------------------------------------ user errors


@pytest.mark.parametrize(
    "case",
    [
        "missing_dir",
        "no_checkpoint",
        "missing_split",
        "corrupt",
        "step_too_large",
        "num_samples_zero",
        "ancestral_few_steps",
        "adjacent_without_ddim",
    ],
)
def test_user_errors_exit_2_without_traceback(run_dir, tmp_path, capsys, case):
    argv = ["--model_dir", str(run_dir), "--out_dir", str(tmp_path / "out")]
    expect = {
        "missing_dir": (["--model_dir", str(tmp_path / "nope")], "matches no folder"),
        "no_checkpoint": (["--pattern", "model"], "no checkpoint"),
        "missing_split": (["--split", "valid"], "valid"),
        "corrupt": ([], "cannot be read"),
        "step_too_large": (["--step", str(T + 1)], "larger than"),
        "num_samples_zero": (["--num_samples", "0"], "--num_samples"),
        "ancestral_few_steps": (["--sampler", "ancestral", "--step", "3"], "ancestral"),
        "adjacent_without_ddim": (
            ["--sampler", "dpm-solver++", "--ddim_adjacent"],
            "--ddim_adjacent",
        ),
    }[case]
    if case == "corrupt":
        (run_dir / "ema_0.9999_000099.pt").write_bytes(b"not a checkpoint")
    assert main(argv + expect[0]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect[1] in err and err.startswith("run_decode.py: error:")


def test_settings_and_folder_names():
    s = DecodeConfig().resolve(2000)
    assert (s.sampler, s.steps) == ("ancestral", 2000)
    assert samples_dir_name("ema_0.9999_050000.pt", s) == "ema_0.9999_050000.pt.samples"
    s = DecodeConfig(steps=200).resolve(2000)
    assert (
        samples_dir_name("ema_0.9999_050000.pt", s, input_label="valid")
        == "ema_0.9999_050000.pt.samples-ddim-200steps-valid"
    )
    assert re.fullmatch(
        r".*\.samples-dpm-solver\+\+-10steps",
        samples_dir_name("x.pt", DecodeConfig(sampler="dpm-solver++", steps=10).resolve(2000)),
    )
