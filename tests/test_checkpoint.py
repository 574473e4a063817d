"""Checkpoint files: atomic writes, corrupt files, latest-state discovery, RNG states, a crash
in the middle of writing a checkpoint."""

from __future__ import annotations

import json
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffuseq.cli.train import main
from diffuseq.errors import CheckpointError
from diffuseq.store.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    capture_rng_state,
    ema_file_name,
    find_latest_state,
    load_state_file,
    parse_step_from_ema_name,
    prune_states,
    resolve_resume,
    restore_rng_state,
    write_latest,
)
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    stalled_process,
    tiny_argv,
)


def _state(folder: Path, step: int) -> Path:
    return atomic_torch_save(
        {"format": STATE_FORMAT, "step": step, "w": torch.arange(1000.0)},
        folder / f"state_{step:06d}.pt",
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_atomic_save_leaves_no_temp_and_survives_failures(tmp_path):
    path = atomic_torch_save({"x": torch.ones(3)}, tmp_path / "a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
    assert torch.equal(load_state_file(path)["x"], torch.ones(3))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"bad": lambda: 0}, path)  # cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # old file intact, no temp
    assert torch.equal(load_state_file(path)["x"], torch.ones(3))


def test_load_state_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_state_file(tmp_path / "missing.pt")
    truncated = _state(tmp_path, 3)
    _truncate(truncated)
    with pytest.raises(CheckpointError, match="state_000003.pt.*truncated"):
        load_state_file(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_state_file(garbage)


def test_find_latest_state(tmp_path):
    assert find_latest_state(tmp_path) is None
    for step in (2, 4, 6):
        _state(tmp_path, step)
    write_latest(tmp_path, state_name="state_000004.pt", step=4)
    assert find_latest_state(tmp_path) == tmp_path / "state_000004.pt"  # the pointer wins
    _truncate(tmp_path / "state_000004.pt")
    assert find_latest_state(tmp_path) == tmp_path / "state_000006.pt"  # scan, newest first
    _truncate(tmp_path / "state_000006.pt")
    (tmp_path / "state_000008.pt.tmp").write_bytes(b"partial")
    assert find_latest_state(tmp_path) == tmp_path / "state_000002.pt"
    (tmp_path / "latest.json").write_text("{broken")
    assert find_latest_state(tmp_path) == tmp_path / "state_000002.pt"


def test_prune_keeps_newest_states_and_every_ema(tmp_path):
    for step in (1, 2, 3, 4):
        _state(tmp_path, step)
        atomic_torch_save({}, tmp_path / ema_file_name(0.9999, step))
    write_latest(tmp_path, state_name="state_000004.pt", step=4)
    deleted = prune_states(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["state_000001.pt", "state_000002.pt"]
    assert sorted(p.name for p in tmp_path.glob("state_*")) == [
        "state_000003.pt",
        "state_000004.pt",
    ]
    assert len(list(tmp_path.glob("ema_*"))) == 4
    assert prune_states(tmp_path, keep=0) == []


def test_ema_names_and_step_parsing():
    assert ema_file_name(0.9999, 50000) == "ema_0.9999_050000.pt"
    assert ema_file_name(1 - 1e-5, 7) == "ema_0.99999_000007.pt"
    assert parse_step_from_ema_name("runs/x/ema_0.9999_050000.pt") == 50000
    assert parse_step_from_ema_name("ema_0.9999_1234567.pt") == 1234567  # > 6 digits
    assert parse_step_from_ema_name("ema_0.999_12.pt") == 12
    with pytest.raises(CheckpointError, match="model.pt"):
        parse_step_from_ema_name("model.pt")


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.randn(5), np.random.randn(3), random.random()
    path = atomic_torch_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.randn(4), np.random.randn(4), np.random.choice(10, 3), random.random())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_state_file(path)["rng"])
    got = (torch.randn(4), np.random.randn(4), np.random.choice(10, 3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and np.array_equal(expected[2], got[2])
    assert expected[3] == got[3]


def test_resolve_resume_kinds(tmp_path):
    assert resolve_resume("none").kind == "none"
    with pytest.raises(CheckpointError, match="--checkpoint_path"):
        resolve_resume("auto")
    assert resolve_resume("auto", checkpoint_path=str(tmp_path / "new")).kind == "none"
    with pytest.raises(CheckpointError, match="no complete training state"):
        resolve_resume(str(tmp_path))
    ema = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "ema_0.9999_001200.pt")
    source = resolve_resume(str(ema))
    assert (source.kind, source.step) == ("weights", 1200)
    _state(tmp_path, 5)
    source = resolve_resume(str(tmp_path))
    assert (source.kind, source.step, source.run_dir) == ("state", 5, tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(str(tmp_path / "nope.pt"))


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_then_auto_resume(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, learning_steps=8, save_interval=2)
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO_ROOT / "tests" / "slow_save_train.py"), "4", *argv]
    with stalled_process(
        [*cmd, "--checkpoint_path", str(run)], cwd=tmp_path, log=tmp_path / "stderr.txt"
    ) as proc:
        pass  # killed half-way through writing state_000004.pt

    # the crash left a partial temp file, never a truncated file under a final name
    assert [p.name for p in run.glob("state_000004.pt.*.tmp")] == [
        f"state_000004.pt.{proc.pid}.tmp"
    ]
    assert not (run / "state_000004.pt").exists()
    for path in list(run.glob("state_*.pt")) + list(run.glob("ema_*.pt")):
        load_state_file(path)
    assert json.loads((run / "latest.json").read_text())["state"] == "state_000002.pt"
    assert find_latest_state(run) == run / "state_000002.pt"

    assert main(argv + ["--checkpoint_path", str(run), "--resume_checkpoint", "auto"]) == 0
    assert "resumed exactly from" in (run / "log.txt").read_text()
    final = load_state_file(run / "state_000008.pt")
    assert final["step"] == 8 and find_latest_state(run) == run / "state_000008.pt"
    assert not list(run.glob("*.tmp"))
    # and the crash changed nothing: an uninterrupted run ends with the same weights
    assert main(argv + ["--checkpoint_path", str(tmp_path / "straight")]) == 0
    straight = load_state_file(tmp_path / "straight" / "state_000008.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, final["model"][key]), key
