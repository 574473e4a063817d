"""Typed config: flag generation, YAML/JSON round trips, validation, run-folder naming."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from diffuseq.cli.flags import add_dataclass_flags, given_flags
from diffuseq.config import SECTIONS, RunConfig, run_folder_name
from diffuseq.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    for kind in SECTIONS.values():
        add_dataclass_flags(parser, kind)
    return parser


def run_config_from_args(ns: argparse.Namespace, *, base: RunConfig | None = None) -> RunConfig:
    """Defaults < ``base`` < the flags given (the training CLI's layering)."""
    flags = {k: v for kind in SECTIONS.values() for k, v in given_flags(ns, kind).items()}
    return RunConfig.from_layers(((base or RunConfig()).to_dict(), "base"), (flags, "flags"))


def test_original_flag_names_and_defaults():
    ns = _parser().parse_args([])
    config = run_config_from_args(ns)
    # run_train.py wrapper defaults (docs/original.md §2.2)
    assert config.diffusion.diffusion_steps == 4000
    assert config.diffusion.noise_schedule == "cosine"
    assert config.diffusion.schedule_sampler == "uniform"
    assert config.train.batch_size == 64 and config.train.microbatch == 64
    assert config.train.seed == 101 and config.train.learning_steps == 40000
    assert config.model.config_name == "bert-base-uncased" and config.data.vocab == "bert"
    assert config.diffusion.denoise_rate == 0.2


def test_flags_override_and_bool_parsing():
    ns = _parser().parse_args(
        [
            "--bsz",
            "8",
            "--microbatch",
            "4",
            "--diff_steps",
            "50",
            "--learned_mean_embed",
            "True",
            "--denoise",
            "--use_fp16",
            "false",
            "--lr",
            "1e-05",
        ]
    )
    base = RunConfig().replace("train", seed=7)
    config = run_config_from_args(ns, base=base)
    assert config.train.batch_size == 8 and config.train.microbatch == 4
    assert config.diffusion.diffusion_steps == 50
    assert config.model.learned_mean_embed is True and config.diffusion.denoise is True
    assert config.train.use_fp16 is False
    assert config.train.seed == 7  # untouched base value survives
    original = config.replace("data", dataset="qqp").replace("train", run_name_format="original")
    assert run_folder_name(original, timestamp="T").startswith(
        "diffuseq_qqp_h128_lr1e-05_t50_cosine_uniform_seed7_-T"
    )


def test_every_flag_has_help():
    for action in _parser()._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest


def test_yaml_round_trip(tmp_path):
    config = (
        RunConfig()
        .replace("model", hidden_dim=64, learned_mean_embed=True)
        .replace("train", ema_rate="0.999,0.9999")
    )
    config.save_yaml(tmp_path / "config.yaml")
    again = RunConfig.load_yaml(tmp_path / "config.yaml")
    assert again == config
    assert again.train.ema_rates == (0.999, 0.9999)


def test_flat_yaml_with_flag_names(tmp_path):
    (tmp_path / "c.yaml").write_text("bsz: 32\ndiff_steps: 100\nnoise_schedule: sqrt\n")
    config = RunConfig.load_yaml(tmp_path / "c.yaml")
    assert (config.train.batch_size, config.diffusion.diffusion_steps) == (32, 100)
    (tmp_path / "bad.yaml").write_text("bsz: 32\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key"):
        RunConfig.load_yaml(tmp_path / "bad.yaml")


def test_yaml_base_preset(tmp_path):
    (tmp_path / "qqp.yaml").write_text("bsz: 32\ndiff_steps: 100\nnotes: plain\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "qqp-sc.yaml").write_text("base: ../qqp.yaml\nself_cond: true\nnotes: sc\n")
    (tmp_path / "sub" / "more.yaml").write_text("base: qqp-sc.yaml\nbsz: 16\n")
    config = RunConfig.load_yaml(tmp_path / "sub" / "more.yaml")
    assert (config.train.batch_size, config.diffusion.diffusion_steps) == (16, 100)
    assert config.model.self_cond and config.train.notes == "sc"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nbsz: 8\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        RunConfig.load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(the base of .*c.yaml\) does not exist"):
        RunConfig.load_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [1]\n")
    with pytest.raises(ConfigError, match="'base' must name another preset"):
        RunConfig.load_yaml(tmp_path / "d.yaml")


@pytest.mark.parametrize(
    "section, changes, message",
    [
        ("train", {"batch_size": 10, "microbatch": 4}, "not divisible by --microbatch"),
        ("diffusion", {"noise_schedule": "quadratic"}, "choose one of linear"),
        ("diffusion", {"schedule_sampler": "importance"}, "choose one of uniform"),
        ("data", {"seq_len": 4}, "--seq_len 4 is too small"),
        ("diffusion", {"denoise": True}, "--learned_mean_embed True"),
        ("train", {"ema_rate": "0.9,abc"}, "--ema_rate"),
    ],
)
def test_validate_rejects(section, changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace(section, **changes).validate()


def test_training_args_round_trip_with_original_keys(golden_dir):
    runs = sorted((golden_dir / "g9_run" / "diffusion_models").glob("*/training_args.json"))
    assert runs, "G9 run folder missing"
    original = json.loads(runs[0].read_text())
    config = RunConfig.from_training_args(original)
    ours = config.to_training_args()
    # v1 key set, plus only the v2 keys
    v2_keys = {
        "learned_mean_embed",
        "denoise",
        "denoise_rate",
        "rejection_rate",
        "reg_rate",
        "device",
        "data_split_num",
    }
    assert set(original) <= set(ours) and set(ours) - set(original) <= v2_keys
    for key, value in original.items():
        assert ours[key] == value, key
    assert RunConfig.from_training_args(ours) == config


REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("task", ["qqp", "qg", "dialogue", "ts"])
def test_shipped_recipe_presets_extend_the_paper_presets(task):
    """configs/<task>-nf.yaml, -v2-sc.yaml, -len.yaml and -adapt.yaml are the paper preset plus
    only their recipe's flags (and notes); the paper preset itself stays the original's (no extension switched on)."""
    paper = RunConfig.load_yaml(REPO_CONFIGS / f"{task}.yaml")
    assert paper.diffusion.noise_floor == 0.0 and not paper.model.self_cond
    nf = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-nf.yaml")
    assert nf.diffusion.noise_floor == 0.3 and nf.train.notes == f"{task}-nf"
    v2sc = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-v2-sc.yaml")
    assert v2sc.model.self_cond and v2sc.diffusion.denoise and v2sc.diffusion.noise_floor == 0.0
    length = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-len.yaml").validate()
    assert length.model.length_predict and length.train.notes == f"{task}-len"
    adapt = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-adapt.yaml").validate()
    assert adapt.diffusion.adaptive_schedule == 500 and not adapt.model.length_predict
    for recipe in (length, adapt):
        changed = {
            section: {k for k, v in vars(getattr(paper, section)).items()
                      if v != vars(getattr(recipe, section))[k]}
            for section in ("model", "diffusion")
        }  # fmt: skip
        assert set().union(*changed.values()) <= {"length_predict", "adaptive_schedule"}
    for recipe in (nf, v2sc, length, adapt):
        for section in ("data", "train"):
            a, b = vars(getattr(paper, section)), vars(getattr(recipe, section))
            assert {k for k in a if a[k] != b[k]} <= {"notes"}, (section, a, b)


@pytest.mark.parametrize("task", ["qqp", "qg", "dialogue", "ts"])
def test_family_presets_change_only_the_family_keys(task):
    """configs/<task>-rdm.yaml and <task>-ar.yaml keep the paper preset's data and training
    budget; only the family, its section and (for ar) the model size differ."""
    paper = RunConfig.load_yaml(REPO_CONFIGS / f"{task}.yaml")
    rdm = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-rdm.yaml").validate()
    ar = RunConfig.load_yaml(REPO_CONFIGS / f"{task}-ar.yaml").validate()
    assert (rdm.model.family, ar.model.family) == ("discrete", "ar")
    assert rdm.discrete.discrete_loss == "rdm" and ar.model.ar_layers == "6+6"
    for recipe in (rdm, ar):
        for section in ("data", "train"):
            a, b = vars(getattr(paper, section)), vars(getattr(recipe, section))
            assert {k for k in a if a[k] != b[k]} <= {"notes"}, (section, a, b)


def test_training_args_carry_a_non_default_family():
    """training_args.json keeps the original key set for the Gaussian family and adds
    ``family`` otherwise, so a folder with only that file still rebuilds the right model."""
    assert "family" not in RunConfig().to_training_args()
    for family in ("ar", "discrete"):
        args = RunConfig.from_dict({"family": family}).to_training_args()
        assert args["family"] == family
        assert RunConfig.from_training_args(args).model.family == family
