"""The Python training API (diffuseq.training): what it returns, the same run as the command
line, resuming, checking, and its place in the layering (the command line imports it, never
the reverse)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import diffuseq
from diffuseq.cli.train import main
from diffuseq.config import RunConfig
from diffuseq.errors import ConfigError
from diffuseq.runtime import dist
from diffuseq.store.checkpoint import load_state_file
from diffuseq.training import TrainResult, check, prepare, train
from tests.train_helpers import (
    assert_same,
    make_tiny_data,
    read_metrics,
    tiny_argv,
    tiny_config,
    train_tiny,
)

PACKAGE = Path(diffuseq.__file__).resolve().parent


@pytest.fixture
def data(tmp_path):
    return make_tiny_data(tmp_path / "data")


def test_api_run_equals_the_command_line_run_bit_for_bit(tmp_path, data):
    flags = dict(learning_steps=6, save_interval=3, ema_rate="0.9,0.999")
    api_run, cli_run = tmp_path / "api", tmp_path / "cli"
    result = train(tiny_config(data, checkpoint_path=api_run, **flags), progress=False)
    assert main(tiny_argv(data, checkpoint_path=cli_run, **flags)) == 0

    assert isinstance(result, TrainResult)
    assert (result.run_dir, result.step, result.stopped_early, result.rank) == (
        api_run,
        6,
        False,
        0,
    )
    assert [p.name for p in result.ema_files] == ["ema_0.9_000006.pt", "ema_0.999_000006.pt"]
    assert result.model_dir == api_run / "hf" / "ema_0.9_000006"  # the EMA file decoding picks
    assert (result.model_dir / "model.safetensors").is_file()
    for path in result.ema_files:
        assert_same(load_state_file(path), load_state_file(cli_run / path.name), path.name)
    a, b = (
        load_state_file(api_run / "state_000006.pt"),
        load_state_file(cli_run / "state_000006.pt"),
    )
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)
    a["config"]["train"]["checkpoint_path"] = b["config"]["train"]["checkpoint_path"]
    assert a["config"] == b["config"]  # the same config, but for the folder
    losses = lambda run: [r for r in read_metrics(run) if "loss" in r]  # noqa: E731
    assert losses(api_run) == losses(cli_run) and losses(api_run)
    # the run's log.txt is let go when train() returns: later logging does not append to it
    handlers = logging.getLogger("diffuseq").handlers
    assert not [h for h in handlers if isinstance(h, logging.FileHandler)]


def test_prepare_then_resume_through_the_api_is_exact(tmp_path, data):
    flags = dict(learning_steps=8, save_interval=4)
    straight = train_tiny(data, checkpoint_path=tmp_path / "straight", export_model=False, **flags)

    config = tiny_config(data, checkpoint_path=tmp_path / "split", **flags)
    trainer = prepare(config, progress=False)
    try:
        assert trainer.step == 0 and trainer.run_dir == tmp_path / "split"
        assert trainer.fit(until=4) == 4
    finally:
        trainer.close()
        dist.cleanup()
    assert check(config.replace("train", resume_checkpoint="auto")) == (
        f"continues {tmp_path / 'split' / 'state_000004.pt'} (step 4); data {data}"
    )
    resumed = train(
        config.replace("train", resume_checkpoint="auto"), progress=False, export_model=False
    )
    assert (resumed.step, resumed.stopped_early, resumed.model_dir) == (8, False, None)
    a, b = (load_state_file(r.run_dir / "state_000008.pt") for r in (straight, resumed))
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)


def test_budget_stop_and_resume_from_the_saved_config(tmp_path, data):
    run = tmp_path / "run"
    stopped = train_tiny(data, checkpoint_path=run, learning_steps=4, max_minutes=1e-5)
    assert (stopped.step, stopped.stopped_early, stopped.model_dir) == (1, True, None)
    assert [p.name for p in stopped.ema_files] == ["ema_0.9999_000001.pt"]

    # from Python, a run continues from its own config.yaml ...
    saved = RunConfig.load_yaml(run / "config.yaml")
    other = saved.replace("model", hidden_dim=24).replace("train", resume_checkpoint="auto")
    with pytest.raises(ConfigError, match="hidden_dim"):  # ... and may not change the model
        train(other, device="cpu", progress=False)
    done = train(
        saved.replace("train", resume_checkpoint="auto"), progress=False, export_model=False
    )
    assert (done.run_dir, done.step, done.stopped_early) == (run, 4, False)
    assert "resumed exactly from" in (run / "log.txt").read_text()


def test_layers_continue_with_the_saved_values(tmp_path, data):
    """With ``layers`` (what the command line passes), a continued run's saved config is the
    base: values the layers leave out come from the state, not from the defaults."""
    run = tmp_path / "run"
    train_tiny(data, checkpoint_path=run, learning_steps=2, export_model=False)
    layers = [({"resume_checkpoint": str(run), "learning_steps": 3}, "test")]
    config = RunConfig.from_layers(*layers)  # the defaults: another model, no data folder
    assert config.model.hidden_dim != 16
    assert check(config, layers=layers) == (
        f"continues {run / 'state_000002.pt'} (step 2); data {data}"
    )
    result = train(config, layers=layers, progress=False, export_model=False)
    assert result.step == 3
    assert load_state_file(run / "state_000003.pt")["config"]["model"]["hidden_dim"] == 16


def test_check_writes_nothing_and_bad_options_are_config_errors(tmp_path, data):
    config = tiny_config(data, checkpoint_path=tmp_path / "run")
    assert check(config, device="cpu") == f"new run; data {data}"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="--keep_states"):
        train(config, keep_states=-1)
    with pytest.raises(ConfigError, match="--device"):
        train(config, device="tpu")
    assert not (tmp_path / "run").exists()


def test_public_names():
    assert diffuseq.train is train
    assert "train" in diffuseq.__all__ and ":func:`train`" in (diffuseq.__doc__ or "")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["training", "config"])
def test_training_and_config_never_import_the_command_lines(folder):
    paths = sorted((PACKAGE / folder).glob("*.py"))
    assert paths
    bad = {p.name: n for p in paths for n in _imports(p) if n.startswith("diffuseq.cli")}
    assert bad == {}
