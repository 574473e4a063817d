"""Hugging Face model folders: written when training finishes and by diffuseq-export (also for
the original's runs), read offline by api.load / TextGenerator.from_pretrained with the same
outputs as the EMA file; bad folders are clean errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.export import main as export_main
from diffuseq.cli.train import main as train_main
from diffuseq.decoding import api
from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.hf_folder import MODEL_FILE, load_safetensors
from tests.train_helpers import make_tiny_data, tiny_argv

SOURCES = ["where is the station ?", "i want a ticket", "the shop was closed"]
FILES = {"README.md", "config.json", "environment.json", "model.safetensors"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained run (4 steps, EMA files at steps 2 and 4)."""
    root = tmp_path_factory.mktemp("hf")
    data = make_tiny_data(root / "data")
    argv = tiny_argv(data, checkpoint_path=root / "run", learning_steps=4, save_interval=2)
    assert train_main(argv) == 0
    return root / "run"


def assert_same_outputs(a: api.TextGenerator, b: api.TextGenerator, **options) -> None:
    """Equal weights (every tensor) and equal decoded records for the same seed."""
    sa, sb = a.decoder.model.state_dict(), b.decoder.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ra = a.generate_raw(SOURCES, num_samples=2, seed=7, **options)
    assert ra == b.generate_raw(SOURCES, num_samples=2, seed=7, **options)
    assert a.generate(SOURCES, seed=3, **options) == b.generate(SOURCES, seed=3, **options)


def test_training_writes_a_model_folder_equal_to_the_newest_ema(run):
    folder = run / "hf" / "ema_0.9999_000004"
    assert FILES | {"vocab.json"} == {p.name for p in folder.iterdir()}
    assert [p.name for p in (run / "hf").iterdir()] == [folder.name]  # no temp folder left
    info = json.loads((folder / "config.json").read_text())
    assert info["checkpoint"] == {
        "file": "ema_0.9999_000004.pt",
        "run": "run",
        "ema_rate": 0.9999,
        "step": 4,
    }
    assert info["run_config"]["model"]["vocab_size"] == 158
    # the tied matrix once, holding the EMA file's lm_head.weight (the original's loading rule)
    weights, ema = (
        load_safetensors(folder / MODEL_FILE),
        load_state_file(run / "ema_0.9999_000004.pt"),
    )
    assert "lm_head.weight" not in weights and "position_ids" not in weights
    assert torch.equal(weights["word_embedding.weight"], ema["lm_head.weight"])
    card = (folder / "README.md").read_text()
    assert "4 of 4 optimizer steps" in card and "hf upload" in card and "Unknown" in card
    from_ema = api.load(run / "ema_0.9999_000004.pt", device="cpu")
    from_folder = api.load(folder, device="cpu")
    assert from_folder.checkpoint == folder / MODEL_FILE
    assert_same_outputs(from_ema, from_folder)
    assert_same_outputs(from_ema, api.TextGenerator.from_pretrained(folder, device="cpu"))
    assert_same_outputs(from_ema, api.load(folder / MODEL_FILE, device="cpu"))


def test_run_decode_reads_a_model_folder(run, tmp_path):
    outputs = {}
    for name, model_dir in (
        ("ema", run / "ema_0.9999_000004.pt"),
        ("folder", run / "hf" / "ema_0.9999_000004"),
    ):
        argv = ["--model_dir", str(model_dir), "--out_dir", str(tmp_path / name)]
        argv += [
            "--num_samples",
            "2",
            "--seed",
            "11",
            "--input",
            str(run.parent / "data" / "test.jsonl"),
        ]
        assert decode_main(argv) == 0
        files = sorted((tmp_path / name).rglob("seed*.json"))
        outputs[name] = [(p.name, p.read_text()) for p in files]
    assert len(outputs["ema"]) == 2 and outputs["ema"] == outputs["folder"]


def test_export_cli_any_checkpoint_and_evaluation(run, tmp_path, capsys):
    out = tmp_path / "step2"
    assert export_main([str(run / "ema_0.9999_000002.pt"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["checkpoint"]["step"] == 2
    assert_same_outputs(
        api.load(run / "ema_0.9999_000002.pt", device="cpu"), api.load(out, device="cpu")
    )
    # an existing folder is refused without --force; --force replaces it and adds --eval numbers
    assert export_main([str(run), "--out", str(out)]) == 2
    assert "already exists" in " ".join(capsys.readouterr().err.split())
    report = {
        "files": [{"label": "gen/seed101_step0.json", "avg_bleu": 0.25, "avg_rouge_l": 0.5}],
        "mbr": None,
        "diversity": {"avg_self_bleu": 0.75, "avg_div4": 0.5},
    }
    (tmp_path / "eval.json").write_text(json.dumps(report))
    argv = [str(run), "--out", str(out), "--force", "--eval", str(tmp_path / "eval.json")]
    assert export_main(argv) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["checkpoint"]["step"] == 4
    assert info["evaluation"]["files"][0]["avg_bleu"] == 0.25
    card = (out / "README.md").read_text()
    assert "| seed101_step0.json | 0.25 | 0.5 |" in card and "self-BLEU 0.75" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "step2"]  # no temp


def test_export_of_an_original_run_needs_none_of_its_paths(golden_dir, tmp_path):
    (original,) = (golden_dir / "g9_run" / "diffusion_models").iterdir()
    out = tmp_path / "g9"
    assert export_main([str(original), "--out", str(out)]) == 0  # training_args.json only
    from_ema = api.load(original / "ema_0.9999_000004.pt", device="cpu")
    # the folder alone: no tiny_bert_config folder, no vocab.txt, no data beside it
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "model")
    from_folder = api.load(moved, device="cpu")
    assert_same_outputs(from_ema, from_folder)
    assert_same_outputs(from_ema, from_folder, sampler="dpm-solver++", steps=5)


def test_wordpiece_run_exported_on_demand(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(
        data, checkpoint_path=run, learning_steps=2, vocab="wordpiece", wordpiece_vocab_size=200
    )
    assert train_main(argv + ["--export_model", "false"]) == 0
    assert not (run / "hf").exists()
    assert export_main([str(run)]) == 0
    folder = run / "hf" / "ema_0.9999_000002"
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert_same_outputs(api.load(run, device="cpu"), api.load(folder, device="cpu"))


def test_bad_model_folders_are_clean_errors(run, tmp_path, capsys):
    good = run / "hf" / "ema_0.9999_000004"
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(good / MODEL_FILE, no_config / MODEL_FILE)
    with pytest.raises(CheckpointError, match="no config.json"):
        api.load(no_config, device="cpu")
    corrupt = shutil.copytree(good, tmp_path / "corrupt")
    data = (corrupt / MODEL_FILE).read_bytes()
    (corrupt / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        api.load(corrupt, device="cpu")
    (corrupt / MODEL_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        api.load(corrupt, device="cpu")
    bad_json = shutil.copytree(good, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        api.load(bad_json, device="cpu")
    no_weights = shutil.copytree(good, tmp_path / "no_weights")
    (no_weights / MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        api.load(no_weights, device="cpu")
    with pytest.raises(CheckpointError, match="not a model folder"):
        api.TextGenerator.from_pretrained(run)  # a run folder: api.load reads it
    with pytest.raises(OfflineAssetError, match="local cache"):
        api.TextGenerator.from_pretrained("nobody/no-such-diffuseq-model")
    for argv, needle in (
        ([str(tmp_path / "missing")], "neither a run folder"),
        ([str(run / "state_000004.pt"), "--out", str(tmp_path / "x")], "training state"),
        ([str(good)], "already a model folder"),
        ([str(run), "--eval", str(tmp_path / "none.json")], "none.json"),
    ):
        assert export_main(argv) == 2
        err = capsys.readouterr().err
        assert needle in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_recipe_table_and_mismatch_hints_come_from_the_config_fields():
    """The model card's recipe rows and the hints of a checkpoint mismatch are the run config's
    fields declared ``recipe=True`` / ``in_weights`` (the text of the hand-written lists they
    replaced); a field declared so joins them with no other change."""
    from dataclasses import dataclass

    from diffuseq.config import RunConfig, opt
    from diffuseq.config.fields import recipe_fields, weights_hints
    from diffuseq.store.checkpoint_format import _FLAG_OF
    from diffuseq.store.model_card import model_card

    card = model_card({"run_config": RunConfig().to_dict()})
    assert [line for line in card.splitlines() if line.startswith("| `--")] == [
        "| `--hidden_dim` | 128 |",
        "| `--hidden_t_dim` | 128 |",
        "| `--config_name` | `bert-base-uncased` |",
        "| `--num_layers` | 0 |",
        "| `--bert_hidden_size` | 0 |",
        "| `--learned_mean_embed` | False |",
        "| `--self_cond` | False |",
        "| `--embedding_norm` | False |",
        "| `--length_predict` | False |",
        "| `--diff_steps` | 4000 |",
        "| `--noise_schedule` | `cosine` |",
        "| `--schedule_sampler` | `uniform` |",
        "| `--denoise` | False |",
        "| `--noise_floor` | 0 |",
        "| `--noise_rescale` | 0 |",
        "| `--anchor_loss` | False |",
        "| `--length_loss_weight` | 0.1 |",
        "| `--adaptive_schedule` | 0 |",
        "| `--seq_len` | 128 |",
        "| `--vocab` | `bert` |",
        "| `--lr` | 0.0001 |",
        "| `--bsz` | 64 |",
        "| `--learning_steps` | 40000 |",
        "| `--ema_rate` | `0.9999` |",
        "| `--seed` | 101 |",
    ]
    assert _FLAG_OF == {
        "vocab_size": "the vocabulary (--vocab / tokenizer)",
        "hidden_dim": "--hidden_dim",
        "hidden_t_dim": "--hidden_t_dim",
        "bert_hidden_size": "--bert_hidden_size / --config_name",
        "num_layers": "--num_layers / --config_name",
        "intermediate_size": "--intermediate_size / --config_name",
        "max_position_embeddings": "--config_name (max_position_embeddings)",
        "learned_mean_embed": "--learned_mean_embed",
        "self_cond": "--self_cond",
        "embedding_norm": "--embedding_norm",
        "length_predict": "--length_predict",
        "adaptive_schedule": "--adaptive_schedule N > 0 (the weights carry the refitted "
        "schedule, noise_betas)",
    }

    @dataclass(frozen=True)
    class Extra:
        plain: int = opt(1, "not a recipe flag")
        knob: float = opt(0.5, "a new recipe flag", flag="k", recipe=True, in_weights="{flag} / -x")

    assert recipe_fields({"extra": Extra}) == (("extra", "knob", "--k"),)
    assert weights_hints(Extra) == {"knob": "--k / -x"}
