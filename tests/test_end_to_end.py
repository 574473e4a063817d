"""End to end: train -> decode -> evaluate through the three CLIs, in one process and in two.

The two-process run goes through torchrun (gloo, one torch thread per process), as users launch
it; its decode output must equal a one-process decode of the same checkpoint, byte for byte.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.evaluate import main as eval_main
from diffuseq.cli.train import main as train_main
from tests.conftest import REPO_ROOT
from tests.train_helpers import make_tiny_data, run_command, tiny_argv

N_TEST = 6
SAMPLES = 3


def _decode_argv(run: Path, out: Path) -> list[str]:
    return [
        "--model_dir",
        str(run),
        "--sampler",
        "dpm-solver++",
        "--step",
        "5",
        "--num_samples",
        str(SAMPLES),
        "--seed",
        "101",
        "--bsz",
        "7",
        "--out_dir",
        str(out),
    ]


def _samples_folder(out: Path, run: Path) -> Path:
    folders = sorted((out / run.name).glob("ema_*.pt.samples-dpm-solver++-5steps"))
    assert len(folders) == 1, folders
    return folders[0]


def _evaluate(folder: Path, json_out: Path, capsys) -> dict:
    assert (
        eval_main(["--folder", str(folder), "--mbr", "--no_bertscore", "--json", str(json_out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "MBR..." in printed and "avg BLEU score" in printed
    return json.loads(json_out.read_text())


def _check_outputs(folder: Path, report: dict) -> None:
    files = sorted(folder.glob("seed*_step0.json"))
    assert [f.name for f in files] == [f"seed{101 + k}_step0.json" for k in range(SAMPLES)]
    for f in files:
        records = [json.loads(line) for line in f.read_text().splitlines()]
        assert len(records) == N_TEST
        assert all(list(r) == ["recover", "reference", "source"] for r in records)
        assert all(r["source"].startswith("[START]") for r in records)
    assert len(report["files"]) == SAMPLES
    for block in report["files"] + [report["mbr"]["scores"]]:
        assert 0.0 <= block["avg_bleu"] <= 1.0 and 0.0 <= block["avg_rouge_l"] <= 1.0
        assert len(block["bleu"]) == N_TEST
    selected = report["mbr"]["selected_file_index"]
    assert len(selected) == N_TEST and all(0 <= i < SAMPLES for i in selected)


def test_train_decode_evaluate_one_process(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data", n_test=N_TEST)
    run = tmp_path / "run"
    assert train_main(tiny_argv(data, checkpoint_path=run, learning_steps=12, save_interval=6)) == 0
    assert sorted(p.name for p in run.glob("ema_*.pt")) == [
        "ema_0.9999_000006.pt",
        "ema_0.9999_000012.pt",
    ]
    out = tmp_path / "out"
    assert decode_main(_decode_argv(run, out)) == 0
    folder = _samples_folder(out, run)
    assert "000012" in folder.name  # the newest checkpoint
    report = _evaluate(folder, tmp_path / "eval.json", capsys)
    _check_outputs(folder, report)


def _torchrun(script: str, argv: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO_ROOT / script),
        *argv,
    ]
    done = run_command(cmd, cwd=cwd, env=env, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"{script} under torchrun failed ({done.returncode}):\n{done.stderr[-3000:]}")


@pytest.mark.slow
def test_train_decode_evaluate_two_processes(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data", n_test=N_TEST)
    run = tmp_path / "run"
    _torchrun("run_train.py", tiny_argv(data, checkpoint_path=run, learning_steps=8), tmp_path)
    assert (run / "ema_0.9999_000008.pt").is_file()
    two, one = tmp_path / "out2", tmp_path / "out1"
    _torchrun("run_decode.py", _decode_argv(run, two), tmp_path)
    assert decode_main(_decode_argv(run, one)) == 0
    folder = _samples_folder(two, run)
    for f in sorted(folder.glob("*.json")):
        assert f.read_text() == (_samples_folder(one, run) / f.name).read_text()
    report = _evaluate(folder, tmp_path / "eval.json", capsys)
    _check_outputs(folder, report)
