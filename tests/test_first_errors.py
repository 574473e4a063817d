"""Fast, correct first errors of training: paths checked before torch/transformers load, a
mistyped run folder on resume, a missing dataset naming datasets/README.md, a finished run
saying how to extend it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from diffuseq.cli.train import main
from diffuseq.training import api
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    run_command,
    subprocess_env,
    tiny_argv,
    tiny_config,
    train_tiny,
)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_a_missing_data_folder_is_reported_before_torch_loads(tmp_path):
    script = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from diffuseq.cli.train import main\n"
        f"code = main(['--data_dir', {str(tmp_path / 'nope')!r}, '--vocab', 'bert'])\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules,"
        " round(time.perf_counter() - start, 2))\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=120,
    )
    wall = time.monotonic() - start
    code, torch_loaded, transformers_loaded, seconds = done.stdout.split()
    assert (code, torch_loaded, transformers_loaded) == ("2", "False", "False"), done.stderr
    assert "--data_dir folder not found" in " ".join(done.stderr.split())
    print(f"missing --data_dir reported in {seconds} s in-process, {wall:.2f} s with start-up")
    assert float(seconds) < 3.0  # imports of the config only (~0.3 s on a quiet machine)


def test_a_missing_split_file_before_torch_loads(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data")
    (data / "valid.jsonl").unlink()
    err = _error(capsys, tiny_argv(data))
    assert "the 'valid' split file valid.jsonl is missing from --data_dir" in err


def test_a_mistyped_run_folder_on_resume_says_it_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "diffusion_models" / "demo").mkdir(parents=True)
    argv = ["--checkpoint_path", "diffusion_models/dmeo", "--resume_checkpoint", "auto"]
    err = _error(capsys, argv)
    assert (
        "the run folder diffusion_models/dmeo does not exist (did you mean diffusion_models/demo?)"
        ": there is no run to continue" in err
    )
    assert "train.jsonl" not in err
    # with a data folder it is a new run, and a missing data folder says both
    err = _error(capsys, [*argv, "--data_dir", "nope"])
    assert "nope: --data_dir folder not found" in err
    assert "(--resume_checkpoint auto starts a new run: the run folder" in err
    # from Python (no layers): a new run in a folder that does not exist yet, data checked
    config = tiny_config(tmp_path / "missing", checkpoint_path="x", resume_checkpoint="auto")
    with pytest.raises(Exception, match="folder not found.*starts a new run"):
        api.check(config, device="cpu")


def test_train_sh_without_arguments_and_no_qqp_names_the_datasets_readme(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("train.sh", "common.sh"):
        (root / "scripts" / name).write_text((REPO_ROOT / "scripts" / name).read_text())
    (root / "run_train.py").write_text("raise SystemExit('must not start')\n")
    (root / "datasets").mkdir()
    (root / "datasets" / "README.md").write_text("# Datasets\n")
    env = {**subprocess_env(), "PYTHON": sys.executable, "NPROC": "1"}
    for name in ("CONFIG", "DATA_DIR"):
        env.pop(name, None)
    done = run_command(["bash", "scripts/train.sh"], cwd=root, env=env, timeout=60)
    assert done.returncode == 2
    assert "datasets/QQP not found" in done.stderr and "datasets/README.md" in done.stderr
    assert "must not start" not in done.stderr
    # the same folder given by hand: run_train.py names the README next to it
    done = run_command(
        [sys.executable, str(REPO_ROOT / "run_train.py"), "--data_dir", "datasets/QQP"],
        cwd=root,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 2
    assert "See datasets/README.md for how to get the QQP data" in " ".join(done.stderr.split())


def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train_tiny(data, checkpoint_path=str(run), learning_steps=4, export_model=False)
    capsys.readouterr()
    argv = tiny_argv(data, learning_steps=4, checkpoint_path=str(run), resume_checkpoint="auto",
                     progress="true", export_model="false")  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "nothing to train:" in err and "is finished (step 4 of --learning_steps 4)" in err
    assert "pass --learning_steps N with N greater than 4" in err
    assert "Training from step" not in err and "training:" not in err  # no bar at all
    assert "finished at step 4" in captured.out
    assert main([*argv, "--check_args"]) == 0
    out = capsys.readouterr().out
    assert "which is finished: to train it further, pass --learning_steps N" in out
    assert main([*argv, "--learning_steps", "6"]) == 0  # extended as the message says
    assert json.loads((run / "latest.json").read_text())["step"] == 6
