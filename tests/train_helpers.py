"""Helpers shared by the training tests: a tiny copy of the demo data, tiny-model flags (for the
command line) and the same tiny run as a config (for the Python API, :func:`train_tiny`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffuseq.config import RunConfig
from diffuseq.config.runtime import RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "datasets" / "demo"

# A model of ~20k parameters that trains at ~20 ms per step on one CPU thread.
TINY_FLAGS: dict[str, object] = {
    "dataset": "tiny",
    "hidden_dim": 16,
    "hidden_t_dim": 16,
    "bert_hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 32,
    "seq_len": 24,
    "diff_steps": 8,
    "noise_schedule": "sqrt",
    "schedule_sampler": "lossaware",
    "bsz": 8,
    "microbatch": 4,
    "lr": 0.001,
    "learning_steps": 8,
    "save_interval": 4,
    "log_interval": 2,
    "eval_interval": 3,
    "dropout": 0.1,
    "seed": 102,
    "progress": "false",
}


def make_tiny_data(folder: Path, *, n_train: int = 48, n_valid: int = 16, n_test: int = 8) -> Path:
    """The first lines of the bundled demo splits plus its word-level vocab, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        lines = (DEMO_DIR / f"{split}.jsonl").read_text().splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "vocab.txt").write_text((DEMO_DIR / "vocab.txt").read_text())
    return folder


def tiny_argv(data: Path, **overrides: object) -> list[str]:
    """Command-line flags for a tiny run on the data folder ``data`` (an override of ``None``
    drops a flag, e.g. ``data_dir=None``)."""
    flags = {
        **TINY_FLAGS,
        "data_dir": str(data),
        "vocab": str(Path(data) / "vocab.txt"),
        **overrides,
    }
    argv: list[str] = []
    for name, value in flags.items():
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv


RUNTIME_KEYS = frozenset(RuntimeOptions.__dataclass_fields__)


def tiny_config(data: Path, **overrides: object) -> RunConfig:
    """The run config that ``tiny_argv(data, **overrides)`` gives on the command line, built
    without one (runtime options such as ``progress`` are left out: see :func:`train_tiny`)."""
    values = {
        **TINY_FLAGS,
        "data_dir": str(data),
        "vocab": str(Path(data) / "vocab.txt"),
        **overrides,
    }
    layer = {k: v for k, v in values.items() if v is not None and k not in RUNTIME_KEYS}
    return RunConfig.from_layers((layer, "tiny run")).validate()


def train_tiny(data: Path, **overrides: object):
    """Train the tiny run on ``data`` through the Python API (:func:`diffuseq.training.train`),
    on the CPU without a progress bar; ``overrides`` may mix config fields (field or flag names)
    and the API's runtime keywords (``max_minutes``, ``keep_states``, ``export_model``, ...).
    Returns the :class:`~diffuseq.training.api.TrainResult`."""
    from diffuseq.training import train

    options = {"device": "cpu", "progress": False}
    options.update({k: v for k, v in overrides.items() if k in RUNTIME_KEYS})
    config = tiny_config(data, **{k: v for k, v in overrides.items() if k not in RUNTIME_KEYS})
    return train(config, **options)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same(a, b, where: str = "state") -> None:
    """Recursive exact equality of nested dicts/lists of tensors (same dtype) and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def run_command(
    cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a session of its own, whose
    whole process group is killed on timeout (torchrun's workers too: killing only torchrun
    would leave them holding the output pipes, and the test would hang instead of failing)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... timed out after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def subprocess_env() -> dict[str, str]:
    """The environment for a test's child process: this checkout first, one torch thread."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


@contextlib.contextmanager
def stalled_process(cmd: list[str], *, cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (a helper that prints ``STALLING`` and sleeps at the moment under test),
    yield it once it stalls, and SIGKILL it on leaving (the test's ``kill -9``)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=subprocess_env(), cwd=cwd
        )
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("STALLING"):
                    break
            assert lines and lines[-1].startswith("STALLING"), (lines, log.read_text())
            yield proc
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def train_straight_and_split(argv: list[str], root: Path, *, until: int = 4):
    """Train ``argv`` (8 steps) straight into ``root/straight`` and, into ``root/split``, to
    ``until`` steps, then resumed in a fresh trainer with another process RNG state; assert the
    final training states (model, EMA, optimizer, sampler) are identical.

    Returns:
        ``(straight, split, state)``: the two run folders and the straight run's final state.
    """
    from diffuseq.cli.train import main, prepare
    from diffuseq.runtime import dist
    from diffuseq.store.checkpoint import load_state_file

    straight, split = root / "straight", root / "split"
    assert main(argv + ["--checkpoint_path", str(straight)]) == 0
    trainer = prepare(argv + ["--checkpoint_path", str(split)])
    assert trainer.fit(until=until) == until
    trainer.close()
    dist.cleanup()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    assert main(argv + ["--checkpoint_path", str(split), "--resume_checkpoint", "auto"]) == 0
    a, b = load_state_file(straight / "state_000008.pt"), load_state_file(split / "state_000008.pt")
    for key in ("model", "ema", "optimizer", "sampler"):
        assert_same(a[key], b[key], key)
    return straight, split, a
