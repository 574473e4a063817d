"""The run folder lock, per-process temporary files and contained output paths."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from diffuseq.cli.train import main
from diffuseq.errors import ConfigError
from diffuseq.store.safe_io import (
    LOCK_NAME,
    FolderLock,
    atomic_write_text,
    contained,
    path_component,
    remove_stale_temp_files,
    temp_name,
)
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    run_command,
    stalled_process,
    subprocess_env,
    tiny_argv,
)


def test_a_second_lock_is_refused_and_names_the_holder(tmp_path):
    folder = tmp_path / "run"
    with FolderLock(folder, what="training run", hint="choose another --checkpoint_path"):
        info = json.loads((folder / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        # flock conflicts between two opens of the file, even inside one process
        with pytest.raises(ConfigError) as err:
            FolderLock(folder, what="training run", hint="choose another --checkpoint_path")
        message = str(err.value)
        assert str(folder) in message and f"pid {os.getpid()}" in message
        assert socket.gethostname() in message and info["started"] in message
        assert "choose another --checkpoint_path" in message
    with FolderLock(folder) as again:  # released: the stale lock file does not block
        assert again.held
    assert not again.held


def test_temp_files_are_per_process_and_stale_ones_are_removed(tmp_path):
    target = tmp_path / "state_000004.pt"
    assert temp_name(target).name == f"state_000004.pt.{os.getpid()}.tmp"
    atomic_write_text(target, "done")
    assert target.read_text() == "done" and not list(tmp_path.glob("*.tmp"))
    (tmp_path / "state_000006.pt.99999.tmp").write_text("partial")  # a killed writer's file
    (tmp_path / "notes.tmp").write_text("not ours")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == ["state_000006.pt.99999.tmp"]
    assert (tmp_path / "notes.tmp").is_file()


@pytest.mark.parametrize("value", ["/../../../x", "../x", "a/b", "a\\b", "..", "tab\there"])
def test_path_component_rejects_separators(value):
    with pytest.raises(ConfigError, match="--notes"):
        path_component(value, "--notes")


def test_contained(tmp_path):
    assert contained(tmp_path, "a", "output") == tmp_path / "a"
    with pytest.raises(ConfigError, match="lies outside"):
        contained(tmp_path / "runs", "../x", "the run folder")
    with pytest.raises(ConfigError, match="255 bytes"):
        contained(tmp_path, "x" * 256, "the run folder")


@pytest.mark.slow
def test_two_runs_on_one_folder(tmp_path):
    """A run stalled in the middle of writing a checkpoint holds the folder: a second run exits
    2 naming it and the holder's pid; after a kill -9 the lock is free and the run resumes."""
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(data, learning_steps=8, save_interval=2) + ["--checkpoint_path", str(run)]
    holder_cmd = [sys.executable, str(REPO_ROOT / "tests" / "slow_save_train.py"), "4", *argv]
    with stalled_process(holder_cmd, cwd=tmp_path, log=tmp_path / "stderr.txt") as holder:
        args_before = (run / "training_args.json").read_text()
        # a second run continuing the folder would pass every check but the lock
        second = run_command(
            [sys.executable, str(REPO_ROOT / "run_train.py"), *argv, "--resume_checkpoint", "auto"],
            cwd=tmp_path,
            env=subprocess_env(),
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        message = " ".join(second.stderr.split())
        assert "is in use by another training run" in message
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert str(run).replace(" ", "") in message.replace(" ", "")
        # the refused run wrote nothing into the folder
        assert (run / "training_args.json").read_text() == args_before
        assert len(list(run.glob("*.tmp"))) == 1
    resumed = main(argv + ["--resume_checkpoint", "auto"])
    assert resumed == 0
    assert (run / "state_000008.pt").is_file() and not list(run.glob("*.tmp"))


@pytest.mark.parametrize("source", ["flag", "yaml"])
@pytest.mark.parametrize(("key", "value"), [("notes", "/../../../x"), ("dataset", "../../../x")])
def test_run_names_cannot_leave_diffusion_models(tmp_path, monkeypatch, capsys, source, key, value):
    data = make_tiny_data(tmp_path / "data")
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    argv = tiny_argv(data, learning_steps=2, **{key: None})  # no --dataset tiny
    if source == "flag":
        argv += [f"--{key}", value]
    else:
        (tmp_path / "preset.yaml").write_text(f"{key}: '{value}'\n")
        argv += ["--config", str(tmp_path / "preset.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--{key}" in err and "cannot be used" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "data"] + (
        ["preset.yaml"] if source == "yaml" else []
    )
    assert not list(work.iterdir())  # not even diffusion_models/ was created
