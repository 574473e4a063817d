"""Progress output (diffuseq/runtime/progress.py): bars on a terminal, plain lines in a file or under CI;
the bar's latest loss; the last log interval of a run written to metrics.jsonl."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch

from diffuseq.runtime import progress as progress_module
from diffuseq.runtime.progress import PlainProgress, live_output, progress
from tests.test_decode import make_run
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    read_metrics,
    run_command,
    subprocess_env,
    tiny_argv,
)

ESCAPES = ("\r", "\x1b")


def test_live_output_only_on_a_terminal_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert live_output(tty)
        monkeypatch.setenv("CI", "true")
        assert not live_output(tty)
    os.close(master)
    assert not live_output(io.StringIO())


def test_plain_lines_in_a_file_with_the_latest_value(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out = io.StringIO()
    loss = torch.tensor(0.5)
    with progress(desc="training", total=4, stream=out) as bar:
        assert isinstance(bar, PlainProgress)
        bar.interval = 0.0  # a line per update
        for value in (0.5, 0.25, 0.125, 0.0625):
            loss.fill_(value)
            bar.update(1, loss=loss)
    text = out.getvalue()
    assert not any(c in text for c in ESCAPES)
    lines = text.splitlines()
    assert lines[0] == "training: 0/4 (0%)"
    assert lines[1].startswith("training: 1/4 (25%)") and lines[1].endswith("loss 0.5")
    assert lines[-1].startswith("training: 4/4 (100%)") and lines[-1].endswith("loss 0.0625")


def test_nested_loops_are_silent_in_a_file_and_disabled_shows_nothing():
    out = io.StringIO()
    assert list(progress(range(3), desc="inner", nested=True, stream=out)) == [0, 1, 2]
    assert list(progress(range(3), desc="off", enabled=False, stream=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_a_long_nested_loop_in_a_file_says_its_time_left(monkeypatch):
    """Full-step decoding: the outer bar reads ``batches: 0/4`` for minutes, so the sampler's
    steps say their rate and time left once they have run a few seconds (then every interval);
    short loops stay silent, and no line is written at the start or the end."""
    monkeypatch.setenv("DIFFUSEQ_PROGRESS_INTERVAL", "30")
    out = io.StringIO()
    bar = progress(range(2000), desc="ancestral", nested=True, stream=out)
    assert isinstance(bar, progress_module.StepEstimate)
    clock = [100.0]
    bar._time = lambda: clock[0]  # tqdm's clock
    bar.start_t = bar.last_print_t = clock[0]
    for _ in bar:
        clock[0] += 0.5  # 2 steps per second: 1000 s in all
    lines = out.getvalue().splitlines()
    assert lines[0] == "ancestral: 10/2000 (0%), 2 it/s, eta 16m35s, elapsed 0m05s"
    assert len(lines) == 1 + (1000 - 5) // 30 and lines[1].startswith("ancestral: 70/2000")
    assert not any(c in out.getvalue() for c in ESCAPES)


def test_live_bar_shows_the_latest_loss(monkeypatch):
    monkeypatch.setattr(progress_module, "live_output", lambda stream=None: True)
    out = io.StringIO()
    loss = torch.tensor(1.0)
    with progress(desc="training", total=3, stream=out) as bar:
        for value in (1.0, 2.0, 3.0):
            loss.fill_(value)
            bar.update(1, loss=loss)
    assert "loss=3" in out.getvalue().split("\r")[-1]


def test_plain_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIFFUSEQ_PROGRESS_INTERVAL", "7.5")
    assert PlainProgress(total=1, stream=io.StringIO()).interval == 7.5


@pytest.mark.slow
def test_training_to_a_file_writes_plain_lines_and_the_last_interval(tmp_path):
    data = make_tiny_data(tmp_path / "data", n_train=16, n_valid=8)
    run = tmp_path / "run"
    argv = tiny_argv(data, learning_steps=8, log_interval=3, checkpoint_path=run, progress="true")
    env = {**subprocess_env(), "DIFFUSEQ_PROGRESS_INTERVAL": "0"}
    env.pop("CI", None)
    result = run_command(
        [sys.executable, str(REPO_ROOT / "run_train.py"), *argv], cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for text in (result.stdout, result.stderr, (run / "log.txt").read_text()):
        assert not any(c in text for c in ESCAPES)
    lines = [line for line in result.stderr.splitlines() if line.startswith("training: ")]
    assert lines[0] == "training: 0/8 (0%)" and lines[-1].startswith("training: 8/8 (100%)")
    assert "loss " in lines[-1]
    steps = [record["step"] for record in read_metrics(run) if "loss" in record]
    assert steps[-1] == 7  # the last update (0-based index 7): its partial interval is written
    assert steps[:3] == [0, 3, 6]


def test_decoding_to_a_file_writes_plain_lines(tmp_path, monkeypatch):
    from diffuseq.cli.decode import main

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DIFFUSEQ_PROGRESS_INTERVAL", "0")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    run = make_run(tmp_path / "work")
    assert main(["--model_dir", str(run), "--out_dir", str(tmp_path / "out"), "--bsz", "2"]) == 0
    text = err.getvalue()
    assert not any(c in text for c in ESCAPES)
    assert "batches: 3/3 (100%)" in text
