"""torchrun's environment read by diffuseq.runtime.dist: bad values and a group that never forms
give a clean error (exit 2) within the stated timeout instead of a traceback or a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from diffuseq.errors import ConfigError
from diffuseq.runtime import dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set"),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            "RANK=2 is not in [0, WORLD_SIZE=2)",
        ),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ],
)
def test_inconsistent_environment_is_a_config_error(monkeypatch, env, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        dist.env_info()
    assert message in str(err.value) and "torchrun" in str(err.value)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
def test_join_timeout_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("DIFFUSEQ_JOIN_TIMEOUT", value)
    with pytest.raises(ConfigError, match="DIFFUSEQ_JOIN_TIMEOUT"):
        dist.join_timeout()


def test_a_rank_that_never_joins_fails_within_the_timeout(tmp_path):
    """WORLD_SIZE=2 with rank 0 alone: exit 2 with a message, not a 30-minute wait."""
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "DIFFUSEQ_JOIN_TIMEOUT": "3",
        "OMP_NUM_THREADS": "1",
    }
    code = (
        "import sys\n"
        "from diffuseq.cli.common import run_cli\n"
        "from diffuseq.runtime import dist\n"
        "sys.exit(run_cli(lambda argv: dist.init(device='cpu') and 0, [], 'probe'))\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())  # the message is wrapped at 100 columns
    assert "not all 2 processes joined at 127.0.0.1:" in said
    assert "within 3 s (DIFFUSEQ_JOIN_TIMEOUT)" in said
    assert "Traceback" not in said
    assert time.monotonic() - start < 60
