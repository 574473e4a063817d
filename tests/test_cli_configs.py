"""One config system for the three CLIs: flags -> config -> dict -> config, --help, registries."""

from __future__ import annotations

import json
import re

import pytest
import torch

from diffuseq.cli import decode, evaluate, train
from diffuseq.cli.flags import config_from_args
from diffuseq.config import (
    DTYPES,
    DecodeConfig,
    DecodeJob,
    DiffusionConfig,
    EvalConfig,
    ResolvedDecode,
    RunConfig,
)
from diffuseq.decoding.job import torch_dtype
from diffuseq.diffusion.schedules import SCHEDULE_NAMES
from diffuseq.diffusion.timestep_sampling import TIMESTEP_DISTRIBUTIONS
from diffuseq.errors import ConfigError
from diffuseq.sampling import SAMPLERS


def _choices(parser, flag: str) -> tuple:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_decode_flags_round_trip_and_original_names():
    argv = [
        "--model_dir", "runs/x", "--step", "10", "--bsz", "7", "--seed", "5",
        "--top_p", "0.5", "--clamp_step", "3", "--sampler", "ddim", "--ddim_adjacent",
        "--text", "a b", "--text", "c", "--note", "v2", "--append", "--dtype", "bf16",
    ]  # fmt: skip
    job, config = decode.parse_args(argv)
    assert config == DecodeConfig(
        sampler="ddim", steps=10, clamp_step=3, top_p=0.5, seed=5, batch_size=7,
        dtype="bf16", ddim_adjacent=True,
    )  # fmt: skip
    assert (job.model_dir, job.text, job.note, job.append) == ("runs/x", ("a b", "c"), "v2", True)
    for kind, value in ((DecodeConfig, config), (DecodeJob, job)):
        again = kind.from_dict(json.loads(json.dumps(value.to_dict())), source="saved")
        assert again == value
    # the field names work as well as the original's flag names
    assert decode.parse_args(["--steps", "10", "--batch_size", "7"])[1] == DecodeConfig(
        steps=10, batch_size=7
    )
    # defaults are the original run_decode.py's (and the API's)
    assert decode.parse_args([]) == (DecodeJob(), DecodeConfig())
    assert (DecodeConfig().seed, DecodeConfig().batch_size, DecodeConfig().steps) == (101, 50, None)
    assert (DecodeJob().split, DecodeJob().out_dir, DecodeJob().pattern) == (
        "test",
        "generation_outputs",
        "ema",
    )
    with pytest.raises(ConfigError, match="saved: unknown key"):
        DecodeConfig.from_dict({"stepz": 3}, source="saved")


def test_a_config_resolves_once_into_a_table_row():
    """The resolved sampler is a row name; the first releases' flags select their rows."""
    T = 2000
    cases = [
        (DecodeConfig(), ("ancestral", T)),
        (DecodeConfig(steps=10), ("ddim", 10)),
        (DecodeConfig(sampler="dpm-solver++-v2", steps=10), ("dpm-solver++-v2", 10)),
        (
            DecodeConfig(sampler="dpm-solver++", dpm_v2_variant=True, steps=10),
            ("dpm-solver++-v2", 10),
        ),
        (DecodeConfig(sampler="ddim", ddim_adjacent=True, steps=10), ("ddim-adjacent", 10)),
        (DecodeConfig(ddim_adjacent=True), ("ddim-adjacent", T)),  # auto: the flag's row
        (DecodeConfig(sampler="ddim-adjacent", steps=10), ("ddim-adjacent", 10)),
        (DecodeConfig(sampler="sde-dpm-solver++", steps=4), ("sde-dpm-solver++", 4)),
    ]
    for config, expected in cases:
        resolved = config.resolve(T)
        assert isinstance(resolved, ResolvedDecode) and resolved.sampler in SAMPLERS
        assert (resolved.sampler, resolved.steps) == expected, config
        assert resolved.row.name == resolved.sampler
    assert DecodeConfig(top_p=-1.0).resolve(T).noise_top_p is None
    assert DecodeConfig(top_p=2).resolve(T).noise_top_p == 2
    for bad, flag in (
        (DecodeConfig(sampler="ddim", dpm_v2_variant=True), "--dpm_v2_variant"),
        (DecodeConfig(sampler="dpm-solver++", ddim_adjacent=True), "--ddim_adjacent"),
        (DecodeConfig(ddim_adjacent=True, dpm_v2_variant=True), "select different samplers"),
    ):
        with pytest.raises(ConfigError, match=re.escape(flag)):
            bad.validate()
    with pytest.raises(ConfigError, match="always runs all T=2000 steps"):
        DecodeConfig(sampler="ancestral", steps=10).resolve(T)
    with pytest.raises(ConfigError, match="decodes gaussian models"):
        DecodeConfig().resolve(T, family="absorbing")


@pytest.mark.parametrize(
    "kind, changes, flag",
    [
        (DecodeConfig, {"num_samples": 0}, "--num_samples"),
        (DecodeConfig, {"batch_size": 0}, "--bsz"),
        (DecodeConfig, {"steps": 0}, "--step"),
        (DecodeConfig, {"sampler": "euler"}, "--sampler 'euler' is unknown"),
        (DecodeConfig, {"dtype": "fp8"}, "--dtype 'fp8' is unknown"),
        (DecodeJob, {"input": "a.jsonl", "text": ("x",)}, "--input"),
        (DecodeJob, {"split": "dev"}, "--split 'dev'"),
        (EvalConfig, {"folder": "f", "workers": 0}, "--workers"),
        (EvalConfig, {"folder": "f", "file": "g"}, "--folder, --file"),
        (EvalConfig, {"folder": "f", "json": "/no/such/dir/out.json"}, "--json"),
    ],
)
def test_validate_names_the_flag(kind, changes, flag):
    with pytest.raises(ConfigError, match=re.escape(flag)):
        kind(**changes).validate()


def test_eval_options_in_json_rebuild_the_config(tmp_path):
    (tmp_path / "seed101_step0.json").write_text(
        json.dumps({"recover": "[CLS] a b [SEP]", "reference": "[CLS] a b [SEP]", "source": "x"})
        + "\n"
    )
    out = tmp_path / "report.json"
    argv = ["--folder", str(tmp_path), "--no_bertscore", "--workers", "1", "--json", str(out)]
    assert evaluate.main(argv) == 0
    saved = json.loads(out.read_text())["options"]
    assert EvalConfig.from_dict(saved) == evaluate.parse_args(argv)
    assert saved["workers"] == 1 and saved["no_bertscore"] is True and saved["mbr"] is False


@pytest.mark.parametrize("module", [train, decode, evaluate])
def test_help_shows_each_default_once_and_groups(module):
    parser = module.build_parser()
    text = parser.format_help()
    titles = [g.title for g in parser._action_groups if g._group_actions]
    assert len(titles) >= 3 and all(f"\n{title}:\n" in text for title in titles)
    for action in parser._actions:
        if action.dest == "help":
            continue
        help_text = action.help
        shown = help_text.lower()
        assert "default" in shown and shown.count("(default") <= 1, (action.dest, help_text)
        assert "  " not in help_text and help_text == help_text.strip(), help_text
    assert module is evaluate or "--bsz BSZ" in text  # the metavar is the flag's name


def test_help_defaults_are_the_field_defaults():
    text = decode.build_parser().format_help()
    flat = " ".join(text.split())
    assert "(default: 50)" in flat and "(default: 101)" in flat
    assert "(default: 'generation_outputs')" in flat
    assert "sampling steps (default: the model's T" in flat  # stated in the help, not doubled


def test_choices_come_from_the_registries():
    assert _choices(decode.build_parser(), "--sampler") == ("auto", *SAMPLERS)
    assert _choices(decode.build_parser(), "--dtype") == tuple(DTYPES)
    assert _choices(train.build_parser(), "--noise_schedule") == SCHEDULE_NAMES
    assert _choices(train.build_parser(), "--schedule_sampler") == TIMESTEP_DISTRIBUTIONS
    assert [torch_dtype(name) for name in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ConfigError, match="choose one of " + ", ".join(SCHEDULE_NAMES)):
        RunConfig(diffusion=DiffusionConfig(noise_schedule="quadratic")).validate()


def test_run_config_layers_later_wins_whatever_the_key_name():
    config = RunConfig.from_layers(
        ({"train": {"batch_size": 8, "seed": 3}}, "state"),
        ({"bsz": 16}, "preset"),
        ({"batch_size": 32}, "flags"),
    )
    assert (config.train.batch_size, config.train.seed) == (32, 3)
    config = RunConfig.from_layers(({"batch_size": 8}, "state"), ({"bsz": 16}, "preset"))
    assert config.train.batch_size == 16
    with pytest.raises(ConfigError, match="preset: unknown key"):
        RunConfig.from_layers(({"bsz": 16}, "state"), ({"bogus": 1}, "preset"))


def test_train_invocation_flags_override_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("bsz: 16\nlearning_steps: 7\n")
    invocation = train.parse_invocation(
        ["--config", str(preset), "--bsz", "8", "--microbatch", "8"]
    )
    assert (invocation.config.train.batch_size, invocation.config.train.learning_steps) == (8, 7)
    saved = RunConfig().replace("model", hidden_dim=64).to_dict()
    resumed = invocation.merged((saved, "state"))
    assert (resumed.model.hidden_dim, resumed.train.batch_size) == (64, 8)
    args = train.build_parser().parse_args(["--max_minutes", "2"])
    assert config_from_args(args, train.RuntimeOptions).max_minutes == 2.0
