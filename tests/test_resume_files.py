"""Issue 24: what a resumed run finds in its folder.

* ``metrics.jsonl``: the records a killed launch wrote after its last saved state are dropped at
  resume (the file is rewritten atomically), so the run keeps one record per step.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from diffuseq.cli.train import main as train_main
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.run_folder import trim_metrics
from tests.train_helpers import make_tiny_data, tiny_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("resume") / "data")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kinds(records: list[dict]) -> Counter:
    """(step, kind) -> count; kind: train, eval or decode record."""
    return Counter(
        (r["step"], "eval" if "eval_loss" in r else "decode" if "decode_bleu" in r else "train")
        for r in records
    )


def test_resume_drops_the_killed_launchs_records(data, tmp_path):
    run = tmp_path / "run"
    argv = tiny_argv(data, checkpoint_path=run, log_interval=1, eval_interval=3, save_interval=2)
    assert train_main([*argv, "--learning_steps", "4"]) == 0
    metrics = run / "metrics.jsonl"
    saved = _records(metrics)
    assert load_state_file(run / "state_000004.pt")["metrics_lines"] == len(saved)
    # a launch killed after the state of step 4: records of steps 4, 5 and half a line
    with metrics.open("a") as handle:
        for step in (4, 5):
            handle.write(json.dumps({"step": step, "loss": 9.0, "samples": 1}) + "\n")
        handle.write('{"step": 6, "lo')
    assert train_main([*argv, "--learning_steps", "7", "--resume_checkpoint", "auto"]) == 0
    records = _records(metrics)  # every line is JSON: the half line is gone
    assert records[: len(saved)] == saved  # the records up to the state are kept as they were
    kinds = _kinds(records)
    assert max(kinds.values()) == 1, kinds  # one record per step and kind
    assert sorted(s for s, k in kinds if k == "train") == list(range(7))
    assert all(r.get("loss") != 9.0 for r in records)


def _write(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_trim_by_line_count(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i} for i in range(5)]
    _write(path, rows, tail='{"st')
    assert trim_metrics(path, step=3, lines=3) == 3
    assert _records(path) == rows[:3]
    assert trim_metrics(path, step=3, lines=3) == 0  # nothing left to drop: not rewritten


def test_trim_by_step_for_states_without_a_line_count(tmp_path):
    """Training records count update indices (< S kept); decode records completed steps."""
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 2, "loss": 1.0},
        {"step": 3, "loss": 1.0},
        {"step": 4, "decode_bleu": 0.1},
        {"step": 4, "loss": 1.0},
        {"step": 5, "decode_bleu": 0.1},
    ]
    _write(path, rows)
    assert trim_metrics(path, step=4) == 2
    assert _records(path) == rows[:3]


def test_trim_without_a_file(tmp_path):
    assert trim_metrics(tmp_path / "metrics.jsonl", step=3, lines=0) == 0
    assert not (tmp_path / "metrics.jsonl").exists()
