"""What stops training early: a diverged run (NaN/inf loss or gradients) stops with an error
naming the step and the last good checkpoint, and saves nothing of it; SIGTERM and SIGINT
(real signals, also under torchrun with 2 processes) save a full training state at the step
reached, print the command that continues the run and exit 143/130; the continued run is
bit-identical to an uninterrupted one. Decoding warns about non-finite weights."""

from __future__ import annotations

import logging
import math
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from diffuseq.cli.train import main as train_main
from diffuseq.decoding import api
from diffuseq.errors import UserError
from diffuseq.store.checkpoint import load_state_file
from diffuseq.training.trainer import Trainer
from diffuseq.training.watch import RunWatch, TrainingDiverged
from tests.train_helpers import (
    REPO_ROOT,
    assert_same,
    make_tiny_data,
    run_command,
    subprocess_env,
    tiny_argv,
)

STEPS, SAVE = 8, 4
TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
]
HELPER = str(REPO_ROOT / "tests" / "signal_train.py")


def _argv(data: Path, run: Path, **flags) -> list[str]:
    return tiny_argv(
        data, checkpoint_path=run, learning_steps=STEPS, save_interval=SAVE, **flags
    ) + ["--progress", "false"]


def _same_end(a: Path, b: Path, step: int = STEPS) -> None:
    """The final training states and EMA files of two runs are bit-identical."""
    x, y = load_state_file(a / f"state_{step:06d}.pt"), load_state_file(b / f"state_{step:06d}.pt")
    for key in ("step", "model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(x[key], y[key], key)
    assert x["optimizer"]["state"]  # real content was compared
    name = f"ema_0.9999_{step:06d}.pt"
    assert_same(load_state_file(a / name), load_state_file(b / name), name)


def _resume_command(stderr: str) -> list[str]:
    """The command the interrupted run printed, runnable here (this Python, torchrun's module)."""
    match = re.search(r"continue the run with: (.+)$", stderr, re.M)
    assert match, stderr[-3000:]
    cmd = shlex.split(match.group(1))
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:]]
    assert cmd[:4] == ["torchrun", "--standalone", "--nproc_per_node", "2"], cmd
    return [*TORCHRUN_2, *cmd[4:]]


# ------------------------------------------------------------------------------ divergence


def _poison_at(monkeypatch, step: int) -> None:
    """From update ``step`` on, one weight is NaN (the loss and gradients follow)."""
    real = Trainer.run_step

    def run_step(self, batch):
        if self.step == step:
            with torch.no_grad():
                self.params[-1].view(-1)[0] = math.nan
        real(self, batch)

    monkeypatch.setattr(Trainer, "run_step", run_step)


@pytest.mark.parametrize(
    "poison, seen, needles",
    [
        (5, 5, ["at step 5", "state_000004.pt (step 4)", "--lr 0.0001"]),  # on the log interval
        (7, 7, ["at step 7", "state_000004.pt (step 4)"]),  # caught before the save of step 8
        (1, 1, ["at step 1", "no checkpoint was saved before it"]),
    ],
    ids=["log-interval", "before-a-save", "before-any-save"],
)
def test_a_diverged_run_stops_and_saves_nothing_of_it(
    tmp_path, monkeypatch, capsys, poison, seen, needles
):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    _poison_at(monkeypatch, poison)
    assert train_main(_argv(data, run, log_interval=2)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "training diverged" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "finished" not in err
    assert not (run / "hf").exists()  # no model folder of the diverged weights
    saved = sorted(p.name for p in run.glob("*_0*.pt"))
    assert saved == (["ema_0.9999_000004.pt", "state_000004.pt"] if poison > SAVE else [])
    for path in run.glob("*_0*.pt"):
        state = load_state_file(path)
        weights = state.get("model", state)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_the_watch_records_the_first_non_finite_step_without_syncing():
    watch = RunWatch(run_dir=Path("nowhere"), lr=0.5)
    watch.observe(torch.tensor(1.0), index=0)
    assert watch.first_bad_step(step=1) is None
    watch.observe(torch.tensor([1.0, math.inf]), index=3)
    watch.observe(torch.tensor(math.nan), index=4)
    assert watch.first_bad_step(step=5) == 3
    # weights alone (e.g. fp16, whose gradient norm is not watched) count at the step reached
    fresh = RunWatch(run_dir=Path("nowhere"), lr=0.5)
    assert fresh.first_bad_step([torch.ones(2), torch.tensor([math.nan])], step=6) == 6
    with pytest.raises(TrainingDiverged, match="at step 6") as err:
        fresh.check_finite([torch.tensor([math.inf])], step=6, last_saved_step=-1)
    assert isinstance(err.value, UserError)


def test_decoding_warns_about_non_finite_weights(tmp_path):
    from tests.test_decode import make_run

    run = make_run(tmp_path)
    path = sorted(run.glob("ema_*.pt"))[-1]
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    with torch.no_grad():
        state[key].view(-1)[0] = math.nan
    torch.save(state, path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffuseq.decode")
    logger.addHandler(handler)
    try:
        api.load(path, device="cpu")
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("NaN or infinite" in m and key in m for m in messages), messages


# ------------------------------------------------------------------------------ signals


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path]:
    """The data and an uninterrupted single-process run of STEPS steps."""
    root = tmp_path_factory.mktemp("straight")
    data = make_tiny_data(root / "data")
    assert train_main(_argv(data, root / "run")) == 0
    return data, root / "run"


@pytest.mark.parametrize(
    "sig, at, code", [("TERM", 5, 143), ("INT", 3, 130)], ids=["sigterm", "sigint"]
)
def test_a_signal_saves_the_step_and_the_printed_command_continues_it_exactly(
    straight, tmp_path, sig, at, code
):
    data, reference = straight
    run = tmp_path / "run"
    done = run_command(
        [sys.executable, HELPER, sig, str(at), "self", *_argv(data, run)],
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=240,
    )
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"SIG{sig}: saved the training state of step {at}" in done.stderr
    assert (run / f"state_{at:06d}.pt").is_file() and not (run / "hf").exists()
    assert not (run / f"state_{STEPS:06d}.pt").exists()
    assert load_state_file(run / f"state_{at:06d}.pt")["step"] == at
    resumed = run_command(
        _resume_command(done.stderr), cwd=tmp_path, env=subprocess_env(), timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_end(reference, run)


@pytest.mark.slow
def test_two_processes_agree_on_the_step_and_resume_exactly(tmp_path):
    """Only rank 1 gets SIGTERM: both ranks save the same step; the printed torchrun command
    continues the run bit-identically to an uninterrupted 2-process run. Then a SIGTERM to
    torchrun itself (forwarded to every rank, as a scheduler's) saves a state too."""
    data = make_tiny_data(tmp_path / "data")
    env = subprocess_env()
    straight, split, forwarded = tmp_path / "straight", tmp_path / "split", tmp_path / "fwd"
    done = run_command(
        [*TORCHRUN_2, "-m", "diffuseq.cli.train", *_argv(data, straight)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_command(
        [*TORCHRUN_2, HELPER, "TERM", "3", "rank1", *_argv(data, split)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0 and (split / "state_000003.pt").is_file(), done.stderr[-3000:]
    assert len(load_state_file(split / "state_000003.pt")["ranks"]) == 2
    resumed = run_command(_resume_command(done.stderr), cwd=tmp_path, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_end(straight, split)

    done = run_command(
        [*TORCHRUN_2, HELPER, "TERM", "3", "parent", *_argv(data, forwarded)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0
    states = sorted(forwarded.glob("state_*.pt"))
    assert states and "continue the run with: torchrun" in done.stderr, done.stderr[-3000:]
    step = load_state_file(states[-1])["step"]
    assert 3 <= step < STEPS and len(load_state_file(states[-1])["ranks"]) == 2


def test_the_slurm_script_forwards_sigterm_and_requeues(tmp_path):
    """scripts/slurm/train.sbatch with stand-ins for srun and scontrol: srun gets the fixed
    run folder and --resume_checkpoint auto; a SIGTERM to the script reaches srun, the script
    waits for it and requeues the job."""
    import os
    import signal
    import subprocess
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    (bin_dir / "scontrol").write_text(
        f'#!/usr/bin/env bash\necho "scontrol $*" >> {log}\n'
        '[[ "$1" == show ]] && echo node1\nexit 0\n'
    )
    (bin_dir / "srun").write_text(  # waits for SIGTERM like a training run, then saves
        f'#!/usr/bin/env bash\necho "srun $*" >> {log}\n'
        f"trap 'sleep 0.5; echo saved >> {log}; exit 143' TERM\n"
        "while true; do sleep 0.1; done\n"
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_NNODES": "1",
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_GPUS_PER_NODE": "1",
    }
    script = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
    proc = subprocess.Popen(
        ["bash", str(script), "--config", "configs/demo.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (log.exists() and "srun" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    calls = log.read_text().splitlines()
    assert proc.returncode == 0, err
    srun = next(c for c in calls if c.startswith("srun"))
    assert "--checkpoint_path diffusion_models/slurm-77 --resume_checkpoint auto" in srun
    assert srun.endswith("--config configs/demo.yaml")  # the user's flags come last (win)
    assert calls[-2:] == ["saved", "scontrol requeue 77"], calls


@pytest.mark.parametrize("steps", [3, 2])
def test_continuing_a_run_without_steps_left_says_how_to_extend_it(straight, capsys, steps):
    """A run at step 8 continued with --learning_steps below 8: an error naming the step and
    a larger --learning_steps, not "Training from step 8 to 4" and exit 0 (exactly 8: the
    finished run is reported and nothing is trained, tests/test_first_errors.py)."""
    _, run = straight
    before = sorted(p.name for p in run.iterdir())
    argv = ["--resume_checkpoint", str(run), "--learning_steps", str(steps * 2)]
    assert train_main(argv + ["--progress", "false"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--learning_steps {steps * 2}" in err and "holds 8 updates" in err, err
    assert "--learning_steps 16" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
