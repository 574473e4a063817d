"""Two CPU processes under torchrun (gloo): disjoint data, identical weights and sampler state,
exact resume; and scripts/train.sh launched from another directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from diffuseq.store.checkpoint import load_state_file
from tests.train_helpers import REPO_ROOT, assert_same, make_tiny_data, run_command, tiny_argv

pytestmark = pytest.mark.slow  # starts processes

STEPS, BSZ, N_TRAIN = 6, 8, 48
TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = run_command(cmd, cwd=cwd, env=env or _env(), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A 2-process run of STEPS steps (states at STEPS/2 and STEPS) and what each rank saw."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_tiny_data(root / "data", n_train=N_TRAIN)
    out = root / "out"
    out.mkdir()
    argv = tiny_argv(data, learning_steps=STEPS, bsz=BSZ, save_interval=STEPS // 2, keep_states=0,
                     diff_steps=100, ema_rate="0.9")  # fmt: skip
    probe_script = str(REPO_ROOT / "tests" / "dist_probe.py")
    _run([*TORCHRUN_2, probe_script, str(out), *argv, "--checkpoint_path", str(root / "run")], root)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return root, argv, ranks


def test_each_rank_sees_disjoint_data(probe):
    _, _, (r0, r1) = probe
    assert r0["world_size"] == r1["world_size"] == 2
    per_epoch = N_TRAIN // 2  # examples per rank and epoch (48 divides evenly)
    assert len(r0["rows"]) == len(r1["rows"]) == STEPS * BSZ
    for epoch in range(STEPS * BSZ // per_epoch):
        a = {tuple(x) for x in r0["rows"][epoch * per_epoch : (epoch + 1) * per_epoch]}
        b = {tuple(x) for x in r1["rows"][epoch * per_epoch : (epoch + 1) * per_epoch]}
        assert len(a) == len(b) == per_epoch and not a & b  # together: the whole split, once
    assert r0["rows"][:per_epoch] != r0["rows"][per_epoch : 2 * per_epoch]  # reshuffled per epoch


def test_ranks_end_with_identical_weights_ema_and_sampler(probe):
    _, _, (r0, r1) = probe
    assert_same(r0["model"], r1["model"], "model")
    assert_same(r0["ema"], r1["ema"], "ema")
    assert_same(r0["sampler"], r1["sampler"], "sampler")
    # every micro-batch loss of both ranks went into the (all-gathered) loss-aware history
    assert int(r0["sampler"]["loss_counts"].sum()) == 2 * STEPS * BSZ
    # noise/dropout streams differ per rank (seed + rank) by default
    assert not torch.equal(r0["rng"], r1["rng"])


def test_state_records_every_rank(probe):
    root, _, (r0, _) = probe
    state = load_state_file(root / "run" / f"state_{STEPS:06d}.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    assert_same(r0["model"], state["model"], "model")


def test_two_process_exact_resume(probe):
    """Resume the 2-process run from its half-way state (copied to a new folder): the end state
    equals the uninterrupted one bit for bit, both ranks' RNG states and data positions included."""
    root, argv, _ = probe
    split = root / "split"
    split.mkdir()
    for name in (f"state_{STEPS // 2:06d}.pt", "vocab.json", "config.yaml"):
        shutil.copy(root / "run" / name, split / name)
    resume = ["--checkpoint_path", str(split), "--resume_checkpoint", "auto"]
    _run([*TORCHRUN_2, str(REPO_ROOT / "run_train.py"), *argv, *resume], root)
    a = load_state_file(root / "run" / f"state_{STEPS:06d}.pt")
    b = load_state_file(split / f"state_{STEPS:06d}.pt")
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)


def test_train_sh_from_another_directory(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    overrides = tiny_argv(data, learning_steps=2, save_interval=2, data_dir=None)
    env = {
        **_env(),
        "NPROC": "1",
        "DATA_DIR": str(data),
        "TORCHRUN": f"{sys.executable} -m torch.distributed.run",
    }
    _run(["bash", str(REPO_ROOT / "scripts" / "train.sh"), *overrides], cwd=workdir, env=env)
    (run,) = (workdir / "diffusion_models").iterdir()
    assert run.name.startswith("diffuseq_tiny_h16_lr0.001_t8_sqrt_lossaware_seed102_test-qqp")
    assert (run / "ema_0.9999_000002.pt").is_file()
    assert load_state_file(run / "state_000002.pt")["world_size"] == 1
