"""Quality during training (--eval_decode_interval): BLEU, ROUGE-L, exact match and examples of
a few decoded validation sources in metrics.jsonl (and TensorBoard), the plot, the progress
line; the training itself bit-identical with and without it; two processes share the sources."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from diffuseq.config import RunConfig
from diffuseq.errors import ConfigError
from diffuseq.store.checkpoint import load_state_file
from diffuseq.training.eval_decode import FAST, decode_settings
from tests.train_helpers import (
    REPO_ROOT,
    assert_same,
    make_tiny_data,
    read_metrics,
    run_command,
    tiny_argv,
    train_tiny,
)

STEPS, INTERVAL, K = 6, 3, 5


def _decode_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "decode_bleu" in r]


def _check_records(records: list[dict]) -> None:
    assert [r["step"] for r in records] == [INTERVAL, 2 * INTERVAL]
    for record in records:
        assert record["decode_sources"] == K
        for key in ("decode_bleu", "decode_rouge_l", "decode_exact"):
            assert 0.0 <= record[key] <= 1.0, key
        assert record["seconds"] >= record["decode_seconds"] >= 0
        assert len(record["decode_examples"]) == 3
        for example in record["decode_examples"]:
            assert set(example) == {"source", "reference", "output"}
            assert example["source"] and example["reference"]
            assert "[START]" not in example["output"] + example["reference"]  # cleaned


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run with and without the periodic decode."""
    root = tmp_path_factory.mktemp("evaldecode")
    data = make_tiny_data(root / "data")
    common = dict(learning_steps=STEPS, save_interval=STEPS, export_model=False)
    with_it = train_tiny(
        data,
        checkpoint_path=str(root / "with"),
        eval_decode_interval=INTERVAL,
        eval_decode_samples=K,
        tensorboard=importlib.util.find_spec("tensorboard") is not None,
        **common,
    )
    without = train_tiny(data, checkpoint_path=str(root / "without"), **common)
    return root, data, with_it, without


def test_the_decode_is_logged_and_leaves_training_bit_identical(runs):
    root, _, with_it, without = runs
    _check_records(_decode_records(with_it.run_dir))
    assert _decode_records(without.run_dir) == []
    a = load_state_file(with_it.run_dir / f"state_{STEPS:06d}.pt")
    b = load_state_file(without.run_dir / f"state_{STEPS:06d}.pt")
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)  # weights, EMA, optimizer, RNG states, data position
    # the loss records are the same too (the decode records are lines of their own)
    losses = [r for r in read_metrics(with_it.run_dir) if "decode_bleu" not in r]
    assert losses == read_metrics(without.run_dir)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
def test_tensorboard_gets_the_scores_and_the_examples(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, with_it, _ = runs
    events = EventAccumulator(str(with_it.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("decode_bleu")]
    assert steps == [INTERVAL, 2 * INTERVAL]
    assert "decode_examples/text_summary" in events.Tags()["tensors"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no matplotlib")
def test_the_plot_draws_bleu_against_steps_and_seconds(runs, tmp_path):
    from diffuseq.training.plots import plot_loss_curves, require_pyplot

    _, _, with_it, without = runs
    out = tmp_path / "loss.png"
    keys = plot_loss_curves(require_pyplot(), read_metrics(with_it.run_dir), out, title="t")
    assert {"decode_bleu", "decode_rouge_l", "decode_exact"} <= set(keys) and out.stat().st_size
    keys = plot_loss_curves(require_pyplot(), read_metrics(without.run_dir), out, title="t")
    assert "decode_bleu" not in keys


def test_the_default_sampler_per_family_and_bad_choices(runs, tmp_path):
    _, data, _, _ = runs
    assert FAST == {
        "gaussian": ("dpm-solver++", 10),
        "discrete": ("rdm", 10),
        "ar": ("greedy", None),
    }
    config = decode_settings("auto", "gaussian", seed=1, batch_size=4, max_steps=8)
    assert (config.sampler, config.steps) == ("dpm-solver++", 8)
    assert decode_settings("ddim", "gaussian", seed=1, batch_size=4).steps == 10
    assert decode_settings("ancestral", "gaussian", seed=1, batch_size=4).steps is None
    with pytest.raises(ConfigError, match="--eval_decode_sampler"):
        RunConfig.from_dict({"eval_decode_sampler": "nope"}).validate()
    with pytest.raises(ConfigError, match="--eval_decode_interval must be ≥ 0"):
        RunConfig.from_dict({"eval_decode_interval": -1}).validate()
    run = tmp_path / "greedy"
    with pytest.raises(ConfigError, match="--eval_decode_sampler greedy decodes --family ar"):
        train_tiny(data, eval_decode_interval=2, eval_decode_sampler="greedy", learning_steps=2,
                   checkpoint_path=str(run))  # fmt: skip
    assert not run.exists()  # refused before the run folder is made


@pytest.mark.slow
def test_two_processes_share_the_sources_and_rank0_logs(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(data, learning_steps=STEPS, save_interval=STEPS, eval_decode_interval=INTERVAL,
                     eval_decode_samples=K, progress="true", checkpoint_path=str(run))  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    done = run_command(
        [*torchrun, "2", str(REPO_ROOT / "run_train.py"), *argv],
        cwd=tmp_path,
        env={**_env(), "DIFFUSEQ_PROGRESS_INTERVAL": "0"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    records = _decode_records(run)
    _check_records(records)  # 5 sources: 3 decoded by rank 0, 2 by rank 1, gathered
    assert "bleu" in done.stderr  # the progress line shows the latest value


def _env() -> dict[str, str]:
    import os

    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
