"""Two-process decoding (gloo, one CPU thread per process) writes exactly the one-process files."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from diffuseq.cli.decode import main
from tests.test_decode import PAIRS, make_run

pytestmark = pytest.mark.slow  # starts processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One torchrun-like process: the rendezvous variables dist.init() reads, then the CLI."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    code = main(argv)
    if code != 0:
        raise SystemExit(f"rank {rank}: run_decode exited with {code}")


def test_two_processes_equal_one(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = make_run(tmp_path / "work")
        # 5 inputs over 2 ranks: uneven shards (3 + 2), two candidates each, batches of 3 rows
        flags = ["--model_dir", str(run), "--num_samples", "2", "--bsz", "3", "--checkpoint", "all"]
        assert main(flags + ["--out_dir", str(tmp_path / "one")]) == 0
        mp.spawn(
            _worker,
            args=(2, _free_port(), flags + ["--out_dir", str(tmp_path / "two")]),
            nprocs=2,
            join=True,
        )
    finally:
        torch.set_num_threads(threads)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.json"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.json"))
    assert one == two and len(one) == 4  # 2 checkpoints × 2 seeds
    for rel in one:
        text = (tmp_path / "one" / rel).read_text()
        assert text == (tmp_path / "two" / rel).read_text()
        assert len(text.splitlines()) == len(PAIRS)
