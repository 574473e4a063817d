"""The shell launchers as a user types them: scripts/train.sh (preset only when nothing is named,
the resume form for any run, one clean message for bad arguments, several "nodes"),
scripts/run_decode.sh (MODEL_DIR from the environment or the first argument) and the process
and thread counts of scripts/common.sh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from diffuseq.store.checkpoint import load_state_file
from tests.conftest import REPO_ROOT
from tests.train_helpers import make_tiny_data, run_command, subprocess_env, tiny_argv

SCRIPTS = REPO_ROOT / "scripts"
TORCHRUN = f"{sys.executable} -m torch.distributed.run"


def _env(**extra: str) -> dict[str, str]:
    env = {**subprocess_env(), "PYTHON": sys.executable, "TORCHRUN": TORCHRUN}
    for name in ("CONFIG", "DATA_DIR", "MODEL_DIR", "NNODES", "NODE_RANK", "RDZV_ENDPOINT"):
        env.pop(name, None)
    return {**env, **extra}


def _bash(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240):
    return run_command(["bash", *args], cwd=cwd, env=env, timeout=timeout)


def _common(snippet: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", f"source {SCRIPTS / 'common.sh'}; {snippet}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``NPROC=1 bash scripts/train.sh --config configs/demo.yaml ...`` (tiny model) and its
    resume form, run from another directory."""
    root = tmp_path_factory.mktemp("launch")
    data = make_tiny_data(root / "data")
    run = root / "run"
    flags = tiny_argv(data, learning_steps=4, save_interval=2)
    env = _env(NPROC="1")
    first = _bash(
        [str(SCRIPTS / "train.sh"), "--config", str(REPO_ROOT / "configs" / "demo.yaml"), *flags,
         "--checkpoint_path", str(run), "--learning_steps", "2"],
        cwd=root, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _bash(
        [str(SCRIPTS / "train.sh"), "--checkpoint_path", str(run), "--resume_checkpoint", "auto",
         "--learning_steps", "4"],
        cwd=root, env=env,
    )  # fmt: skip
    return root, run, first, resumed


def test_train_sh_passes_the_users_config_through(demo_run):
    _, run, first, _ = demo_run
    assert "preset" not in first.stderr  # the user named --config: nothing added
    assert (run / "ema_0.999_000002.pt").is_file()  # ema_rate 0.999 comes from configs/demo.yaml
    assert load_state_file(run / "state_000002.pt")["config"]["data"]["seq_len"] == 24


def test_train_sh_resume_form_continues_any_run(demo_run):
    _, run, _, resumed = demo_run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "preset" not in resumed.stderr
    state = load_state_file(run / "state_000004.pt")
    assert state["step"] == 4 and state["config"]["model"]["hidden_dim"] == 16


def test_train_sh_names_the_preset_it_picks(tmp_path):
    """Nothing named: the QQP preset, said once; its data folder is missing here, which the
    parse-only pass reports once before any rank starts."""
    done = _bash([str(SCRIPTS / "train.sh")], cwd=tmp_path, env=_env(NPROC="2"))
    assert done.returncode == 2
    assert "using the preset" in done.stderr and "configs/qqp.yaml" in done.stderr
    assert done.stderr.count("error:") == 1 and "datasets/QQP" in done.stderr
    assert "Traceback" not in done.stderr and "torch.distributed" not in done.stderr


def test_train_sh_bad_argument_is_one_message(demo_run):
    root, run, _, _ = demo_run
    done = _bash(
        [str(SCRIPTS / "train.sh"), "--checkpoint_path", str(run), "--resume_checkpoint", "auto",
         "--seq_len", "32"],
        cwd=root, env=_env(NPROC="2"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("error:") == 1, done.stderr
    assert "seq_len: 24 in the state, 32 now" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_decode_sh_model_dir_from_env_or_first_argument(demo_run):
    root, run, _, _ = demo_run
    flags = ["--sampler", "dpm-solver++", "--step", "3", "--out_dir", str(root / "gen")]
    by_env = _bash([str(SCRIPTS / "run_decode.sh"), *flags], cwd=root, env=_env(MODEL_DIR=str(run)))
    assert by_env.returncode == 0, by_env.stderr[-3000:]
    folder = root / "gen" / "run" / "ema_0.999_000004.pt.samples-dpm-solver++-3steps"
    assert len((folder / "seed123_step0.json").read_text().splitlines()) == 8
    by_arg = _bash(
        [str(SCRIPTS / "run_decode.sh"), str(run), *flags, "--note", "arg"], cwd=root, env=_env()
    )
    assert by_arg.returncode == 0, by_arg.stderr[-3000:]
    assert (folder / "seed123_step0_arg.json").read_text() == (
        folder / "seed123_step0.json"
    ).read_text()
    assert "full-step" not in by_env.stderr  # a sampler was given: no CPU hint


def test_run_decode_sh_hints_at_fast_decoding_on_cpu(tmp_path):
    done = _bash(
        [str(SCRIPTS / "run_decode.sh"), str(tmp_path / "missing")],
        cwd=tmp_path, env=_env(CUDA_VISIBLE_DEVICES=""),
    )  # fmt: skip
    assert "--sampler dpm-solver++ --step 10" in done.stderr
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_run_decode_sh_without_model_dir_prints_usage(tmp_path):
    done = _bash([str(SCRIPTS / "run_decode.sh"), "--step", "10"], cwd=tmp_path, env=_env())
    assert done.returncode == 2 and "usage:" in done.stderr


def test_process_count_follows_visible_gpus():
    env = _env(PATH="/usr/bin:/bin")  # no nvidia-smi on this PATH
    env.pop("CUDA_VISIBLE_DEVICES", None)
    assert _common("default_nproc", env) == "1"
    assert _common("visible_gpus", {**env, "CUDA_VISIBLE_DEVICES": "0,1,2"}) == "3"
    assert _common("visible_gpus", {**env, "CUDA_VISIBLE_DEVICES": "0,-1,3"}) == "1"
    assert _common("visible_gpus", {**env, "CUDA_VISIBLE_DEVICES": "-1"}) == "0"
    assert _common("default_nproc", {**env, "CUDA_VISIBLE_DEVICES": ""}) == "1"


def test_threads_never_exceed_idle_cores():
    env = _env()
    env.pop("OMP_NUM_THREADS")
    idle, cores, load = _common("idle_cores", env).split()
    assert 1 <= int(idle) <= int(cores)
    assert int(idle) == max(1, min(int(cores), int(cores) - round(float(load) + 1e-9)))
    assert _common("set_threads t 2>/dev/null; echo $OMP_NUM_THREADS", env) == idle
    assert (
        _common("set_threads t 2>/dev/null; echo $OMP_NUM_THREADS", {**env, "OMP_NUM_THREADS": "7"})
        == "7"
    )


def test_launch_commands():
    env = _env(NPROC="1")
    assert _common('torch_launch x.py; echo "${LAUNCH[*]}"', env) == f"{sys.executable} -u x.py"
    two = _common('torch_launch x.py; echo "${LAUNCH[*]}"', {**env, "NPROC": "2"})
    assert two == f"{TORCHRUN} --standalone --nproc_per_node 2 x.py"
    nodes = {**env, "NNODES": "2", "MASTER_ADDR": "node0", "NODE_RANK": "1", "RDZV_ID": "7"}
    assert _common('torch_launch x.py; echo "${LAUNCH[*]}"', nodes) == (
        f"{TORCHRUN} --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint "
        "node0:29500 --rdzv_id 7 --rdzv_conf is_host=0 x.py"
    )


@pytest.mark.slow
def test_two_nodes_equal_one_node_with_two_ranks(tmp_path):
    """Two "nodes" of one process each (two torchruns meeting at a c10d rendezvous on
    localhost) end in the same training state as one torchrun with two processes."""
    data = make_tiny_data(tmp_path / "data")
    flags = tiny_argv(data, learning_steps=4, save_interval=4, diff_steps=100)
    single = _bash(
        [str(SCRIPTS / "train.sh"), *flags, "--checkpoint_path", str(tmp_path / "one")],
        cwd=tmp_path, env=_env(NPROC="2"),
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    nodes = []
    for rank in (0, 1):
        env = _env(NPROC="1", NNODES="2", NODE_RANK=str(rank), RDZV_ENDPOINT=f"localhost:{port}")
        cmd = [
            "bash",
            str(SCRIPTS / "train.sh"),
            *flags,
            "--checkpoint_path",
            str(tmp_path / "two"),
        ]
        nodes.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        )  # fmt: skip
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    a = load_state_file(tmp_path / "one" / "state_000004.pt")
    b = load_state_file(tmp_path / "two" / "state_000004.pt")
    assert a["world_size"] == b["world_size"] == 2
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert _same(a[key], b[key]), key


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
