"""run_train.py: flags, presets, bad input, the run folder and its original-format files."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from diffuseq.cli.train import build_parser, main, parse_invocation, prepare
from diffuseq.config import RunConfig
from diffuseq.models.factory import build_model
from diffuseq.runtime import dist
from diffuseq.store.checkpoint import load_state_file
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    read_metrics,
    tiny_argv,
)

# Keys the original v2 adds to training_args.json (docs/original.md §2.3); nothing else may be added.
V2_KEYS = {
    "learned_mean_embed",
    "denoise",
    "denoise_rate",
    "rejection_rate",
    "reg_rate",
    "device",
    "data_split_num",
}


@pytest.fixture
def data(tmp_path):
    return make_tiny_data(tmp_path / "data")


def _expect_user_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "run_train.py: error:" in err, err
    message = err[
        err.index("run_train.py: error:") :
    ]  # the last paragraph (log lines may precede it)
    squeezed = re.sub(r"\s", "", message)  # the paragraph is wrapped, also inside long paths
    for needle in needles:
        assert re.sub(r"\s", "", str(needle)) in squeezed, (needle, message)
    return message


# ------------------------------------------------------------------------------ bad input


def test_missing_data_dir(tmp_path, capsys):
    _expect_user_error(capsys, tiny_argv(tmp_path / "nowhere"), "nowhere", "--data_dir")
    assert not (tmp_path / "diffusion_models").exists()


def test_missing_split_file(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (data / "valid.jsonl").unlink()
    _expect_user_error(capsys, tiny_argv(data), "valid.jsonl")
    assert not (tmp_path / "diffusion_models").exists()  # nothing created before the data was read


def test_malformed_jsonl_names_the_line(data, capsys):
    lines = (data / "train.jsonl").read_text().splitlines()
    lines[2] = '{"src": "a b c", "trg": '
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    _expect_user_error(capsys, tiny_argv(data), "train.jsonl", "line 3")


@pytest.mark.parametrize(
    "overrides, needles",
    [
        ({"seq_len": 4}, ["--seq_len 4", "too small"]),
        ({"noise_schedule": "quadratic"}, ["--noise_schedule", "quadratic"]),
        ({"schedule_sampler": "magic"}, ["--schedule_sampler", "magic"]),
        ({"bsz": 6, "microbatch": 4}, ["--bsz 6", "--microbatch 4"]),
        ({"use_fp16": "true"}, ["--use_fp16", "CUDA"]),
        ({"keep_states": -1}, ["--keep_states"]),
        ({"ema_rate": "0.9,x"}, ["--ema_rate"]),
    ],
)
def test_bad_flags(data, capsys, overrides, needles):
    _expect_user_error(capsys, tiny_argv(data, **overrides), *needles)


def test_bad_preset_values(tmp_path, data, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("schedule_sampler: magic\n")
    _expect_user_error(
        capsys, tiny_argv(data, schedule_sampler=None) + ["--config", str(preset)], "magic"
    )
    preset.write_text("hidden_dimm: 3\n")
    _expect_user_error(capsys, tiny_argv(data) + ["--config", str(preset)], "hidden_dimm")
    _expect_user_error(
        capsys, tiny_argv(data) + ["--config", str(tmp_path / "none.yaml")], "none.yaml"
    )


def test_wandb_without_the_package(tmp_path, data, capsys, monkeypatch):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    monkeypatch.chdir(tmp_path)
    _expect_user_error(capsys, tiny_argv(data, wandb="true"), "pip install wandb")
    assert not (tmp_path / "diffusion_models").exists()


def test_corrupt_checkpoint(tmp_path, data, capsys):
    bad = tmp_path / "ema_0.9999_000010.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    _expect_user_error(capsys, tiny_argv(data, resume_checkpoint=bad), str(bad), "corrupt")
    _expect_user_error(capsys, tiny_argv(data, resume_checkpoint="auto"), "--checkpoint_path")


# ------------------------------------------------------------------------------ flags and presets


def test_help_lists_every_flag_with_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = [opt for action in build_parser()._actions for opt in action.option_strings]
    for action in build_parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    for flag in flags:
        assert flag in text, flag
    original = (
        "dataset data_dir noise_schedule diff_steps schedule_sampler seq_len hidden_t_dim "
        "hidden_dim "
        "learning_steps save_interval resume_checkpoint lr bsz microbatch seed config_name vocab "
        "use_plm_init notes learned_mean_embed denoise denoise_rate use_fp16 dropout ema_rate "
        "gradient_clipping weight_decay log_interval eval_interval config bf16 checkpoint_path "
        "device "
        "max_minutes keep_states same_seed_all_ranks ema_tied_quirk num_layers num_heads "
        "bert_hidden_size intermediate_size"
    ).split()
    assert {f"--{name}" for name in original} <= set(flags)


def test_flags_override_the_preset_and_yaml_round_trip(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("lr: 0.5\nseed: 7\nbsz: 32\nmicrobatch: 16\nmodel:\n  hidden_dim: 24\n")
    config = parse_invocation(
        ["--config", str(preset), "--lr", "0.002", "--diff_steps", "10"]
    ).config
    assert (config.train.lr, config.train.seed, config.train.batch_size) == (0.002, 7, 32)
    assert (config.model.hidden_dim, config.diffusion.diffusion_steps) == (24, 10)
    assert config.diffusion.noise_schedule == "cosine"  # untouched default
    saved = tmp_path / "saved.yaml"
    config.save_yaml(saved)
    assert RunConfig.load_yaml(saved) == config
    assert parse_invocation(["--config", str(saved)]).config == config


@pytest.mark.parametrize("name", ["qqp", "qg", "dialogue", "ts", "qqp-v2", "demo"])
def test_presets_load(name):
    config = parse_invocation(["--config", str(REPO_ROOT / "configs" / f"{name}.yaml")]).config
    if name != "demo":  # the paper recipes (docs/original.md §2.1)
        assert config.diffusion.diffusion_steps == 2000 and config.train.lr == 1e-4
        assert config.train.seed == 102 and config.diffusion.noise_schedule == "sqrt"
        assert config.model.hidden_dim == 128 and config.data.seq_len == 128
        assert config.diffusion.schedule_sampler == "lossaware"
    if name == "qqp":
        assert (
            config.train.batch_size,
            config.train.microbatch,
            config.train.learning_steps,
            config.train.save_interval,
        ) == (2048, 64, 50000, 10000)
    if name == "qqp-v2":
        assert (config.train.batch_size, config.train.microbatch, config.train.save_interval) == (
            425,
            425,
            5000,
        )
        assert (
            config.train.use_fp16 and config.model.learned_mean_embed and config.diffusion.denoise
        )
        assert config.diffusion.denoise_rate == 0.5


# ------------------------------------------------------------------------------ the run folder


def test_run_folder_training_args_and_ema_format(tmp_path, data, golden_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_argv(data, learning_steps=3, save_interval=2, notes="test")) == 0
    (run,) = (tmp_path / "diffusion_models").iterdir()
    assert re.fullmatch(
        r"diffuseq_tiny_h16_lr0\.001_t8_sqrt_lossaware_seed102_test_\d{8}-\d{6}", run.name
    )
    names = {p.name for p in run.iterdir()}
    assert {
        "config.yaml",
        "training_args.json",
        "vocab.json",
        "log.txt",
        "metrics.jsonl",
        "latest.json",
        "ema_0.9999_000002.pt",
        "ema_0.9999_000003.pt",
        "state_000002.pt",
        "state_000003.pt",
    } <= names

    args = json.loads((run / "training_args.json").read_text())
    (g9_args_path,) = (golden_dir / "g9_run" / "diffusion_models").glob("*/training_args.json")
    g9_keys = set(json.loads(g9_args_path.read_text()))
    assert g9_keys <= set(args) and set(args) - g9_keys <= V2_KEYS
    assert args["checkpoint_path"] == f"diffusion_models/{run.name}"
    assert args["notes"] == run.name.split("_seed102_")[1]  # notes and timestamp, as the original
    assert (args["vocab_size"], args["batch_size"], args["diffusion_steps"]) == (158, 8, 8)

    config = RunConfig.load_yaml(run / "config.yaml")
    assert config.model.vocab_size == 158 and config.train.notes == "test"
    records = read_metrics(run)
    terms = ("loss", "mse", "nll", "decoder_nll", "tT_loss", "t0_loss")  # every term is logged
    train_keys = {f"{k}{s}" for k in terms for s in ("", "_q0", "_q1", "_q2", "_q3")}
    assert (
        train_keys | {"grad_norm", "samples", "step"}
        >= set(records[0])
        >= {"loss", "grad_norm", "step"}
    )
    assert any("eval_loss" in r for r in records)

    ema = torch.load(run / "ema_0.9999_000003.pt", weights_only=True)
    (g9_ema,) = sorted((golden_dir / "g9_run" / "diffusion_models").glob("*/ema_*.pt"))[:1]
    original = torch.load(g9_ema, weights_only=True)
    assert list(ema) == list(original)  # same keys, same order
    # the original's container and entry types: an OrderedDict with state_dict()'s _metadata,
    # nn.Parameter (requires_grad) entries for parameters, plain tensors for the rest
    assert type(ema) is type(original) is OrderedDict
    assert ema._metadata == original._metadata
    for key, value in original.items():
        assert type(ema[key]) is type(value), key
        assert ema[key].requires_grad == value.requires_grad, key
    assert sum(type(v) is torch.nn.Parameter for v in ema.values()) == len(ema) - 2
    model = build_model(config.model)
    model.load_state_dict(ema)
    state = load_state_file(run / "state_000003.pt")
    assert torch.equal(
        ema["word_embedding.weight"], state["ema"]["0.9999"]["word_embedding.weight"]
    )
    assert torch.equal(ema["lm_head.weight"], ema["word_embedding.weight"])  # our default: both EMA
    assert torch.equal(model.word_embedding.weight, ema["word_embedding.weight"])


def test_ema_tied_quirk_keeps_the_raw_tied_weight(tmp_path, data):
    run = tmp_path / "run"
    assert main(tiny_argv(data, learning_steps=2, ema_tied_quirk="true", checkpoint_path=run)) == 0
    ema = load_state_file(run / "ema_0.9999_000002.pt")
    raw = load_state_file(run / "state_000002.pt")["model"]
    assert torch.equal(ema["lm_head.weight"], raw["lm_head.weight"])
    assert not torch.equal(ema["lm_head.weight"], ema["word_embedding.weight"])


def _g9_argv(golden_dir: Path) -> tuple[list[str], Path]:
    """Flags rebuilding the G9 run from its training_args.json (paths relative to g9_run/)."""
    root = golden_dir / "g9_run"
    (args_path,) = (root / "diffusion_models").glob("*/training_args.json")
    args = json.loads(args_path.read_text())
    flags = {
        "dataset": args["dataset"],
        "data_dir": root / args["data_dir"],
        "vocab": root / args["vocab"],
        "config_name": root / args["config_name"],
        "lr": args["lr"],
        "bsz": args["batch_size"],
        "microbatch": args["microbatch"],
        "diff_steps": args["diffusion_steps"],
        "noise_schedule": args["noise_schedule"],
        "schedule_sampler": args["schedule_sampler"],
        "seq_len": args["seq_len"],
        "hidden_t_dim": args["hidden_t_dim"],
        "hidden_dim": args["hidden_dim"],
        "seed": args["seed"],
        "learning_steps": args["learning_steps"],
        "save_interval": args["save_interval"],
        "dropout": args["dropout"],
        "progress": "false",
    }
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))], args_path.parent


def test_resume_from_an_original_ema_file(tmp_path, golden_dir):
    argv, g9_run = _g9_argv(golden_dir)
    first = sorted(g9_run.glob("ema_*.pt"))[0]
    step = int(first.stem.rsplit("_", 1)[1])
    original = load_state_file(first)
    trainer = prepare(
        argv + ["--resume_checkpoint", str(first), "--checkpoint_path", str(tmp_path / "new")]
    )
    try:
        assert trainer.step == step and trainer.run_dir == tmp_path / "new"
        # tied rule: the model's shared matrix is the file's raw lm_head.weight ...
        assert torch.equal(trainer.model.word_embedding.weight, original["lm_head.weight"])
        assert torch.equal(trainer.model.time_embed[0].weight, original["time_embed.0.weight"])
        # ... while the EMA starts from the EMA values (word_embedding.weight), as the original
        ema = dict(zip(trainer.param_names, trainer.ema[0.9999]))
        assert torch.equal(ema["word_embedding.weight"], original["word_embedding.weight"])
        final = trainer.fit()
    finally:
        trainer.close()
        dist.cleanup()
    learning_steps = int(argv[argv.index("--learning_steps") + 1])
    assert final == max(step, learning_steps)
    if learning_steps > step:
        assert (tmp_path / "new" / f"ema_0.9999_{learning_steps:06d}.pt").is_file()


def test_max_minutes_saves_and_stops_then_auto_resume(tmp_path, data, capsys):
    run = tmp_path / "run"
    argv = tiny_argv(data, learning_steps=6, save_interval=100, checkpoint_path=run)
    assert main(argv + ["--max_minutes", "0.00001", "--resume_checkpoint", "auto"]) == 0  # fresh
    assert "stopped early" in capsys.readouterr().out
    assert load_state_file(run / "state_000001.pt")["step"] == 1
    _expect_user_error(capsys, argv, "already holds training states")  # no silent restart
    assert main(argv + ["--resume_checkpoint", "auto", "--keep_states", "1"]) == 0
    assert "finished at step 6" in capsys.readouterr().out
    assert sorted(p.name for p in run.glob("state_*.pt")) == ["state_000006.pt"]
    assert sorted(p.name for p in run.glob("ema_*.pt")) == [
        "ema_0.9999_000001.pt",
        "ema_0.9999_000006.pt",
    ]


def test_resume_refuses_a_different_model(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(tiny_argv(data, learning_steps=2, checkpoint_path=run)) == 0
    err = _expect_user_error(
        capsys,
        tiny_argv(
            data, learning_steps=4, hidden_dim=24, checkpoint_path=run, resume_checkpoint="auto"
        ),
        "hidden_dim",
    )
    assert "24" in err
    # leaving every flag out continues with the saved configuration
    assert (
        main(["--resume_checkpoint", str(run), "--learning_steps", "3", "--progress", "false"]) == 0
    )
    assert load_state_file(run / "state_000003.pt")["config"]["model"]["hidden_dim"] == 16


def test_presets_are_valid_yaml_mappings():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_presets_load_and_recipe_presets_change_only_their_keys():
    """Every preset builds a valid run config; one that names a ``base`` equals its base except
    for the options it sets itself."""
    from dataclasses import fields

    from diffuseq.config import RunConfig
    from diffuseq.config.fields import flag_name

    bases = 0
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        config = RunConfig.load_yaml(path)
        config.validate()
        raw = yaml.safe_load(path.read_text())
        if "base" not in raw:
            continue
        bases += 1
        base = RunConfig.load_yaml(path.parent / raw["base"])
        changed = {
            flag_name(f)
            for section in ("model", "diffusion", "data", "train")
            for f in fields(getattr(config, section))
            if getattr(getattr(config, section), f.name) != getattr(getattr(base, section), f.name)
        }
        assert changed and changed <= set(raw) - {"base"}, (path, changed)
    assert bases, "no recipe preset names a base"
