"""diffuseq-export --force replaces only a model folder diffuseq wrote: never a run folder, a
data folder, a parent of either, a plain file or a folder holding anything else; the
replacement is atomic and leaves no temporary file; a writer killed mid-swap is tidied up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffuseq.cli.export import main as export_main
from diffuseq.store import folder_swap
from diffuseq.store.hf_files import replace_problem
from tests.test_decode import make_run
from tests.train_helpers import make_tiny_data


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export_safety")
    run = make_run(root)
    assert export_main([str(run), "--out", str(root / "model")]) == 0
    make_tiny_data(root / "datasets" / "tiny")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


def run_of(work: Path) -> Path:
    (run,) = (work / "diffusion_models").iterdir()
    return run


@pytest.mark.parametrize(
    "target, needle",
    [
        (lambda w: w / "diffusion_models", "did not write there"),  # a parent of runs
        (run_of, "did not write there"),  # the run folder itself
        (lambda w: w / "datasets" / "tiny", "did not write there"),  # a data folder
        (lambda w: w / "datasets", "did not write there"),  # a parent of data
        (lambda w: w / "data" / "test.jsonl", "not a folder"),  # a plain file
        (lambda w: w, "did not write there"),  # everything
    ],
    ids=["parent-of-runs", "run", "data", "parent-of-data", "plain-file", "root"],
)
def test_force_refuses_what_it_did_not_write(work, target, needle, capsys):
    before = snapshot(work)
    out = target(work)
    assert export_main([str(run_of(work)), "--out", str(out), "--force"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and needle in err and "nothing was deleted" in err, err
    assert snapshot(work) == before  # nothing deleted, nothing left behind


def test_force_refuses_a_model_folder_with_extra_files_or_a_link(work, tmp_path, capsys):
    model = shutil.copytree(work / "model", tmp_path / "model")
    (model / "my_notes.txt").write_text("mine")
    assert export_main([str(run_of(work)), "--out", str(model), "--force"]) == 2
    assert "my_notes.txt" in capsys.readouterr().err
    assert (model / "my_notes.txt").read_text() == "mine"
    (model / "my_notes.txt").unlink()
    (model / "sub").mkdir()
    assert replace_problem(model) is not None  # a sub-folder
    (model / "sub").rmdir()
    info = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**info, "format": "other"}))
    assert "format" in replace_problem(model)
    (model / "config.json").write_text(json.dumps(info))
    assert replace_problem(model) is None
    link = tmp_path / "link"
    link.symlink_to(model, target_is_directory=True)
    assert export_main([str(run_of(work)), "--out", str(link), "--force"]) == 2
    assert "symbolic link" in capsys.readouterr().err and link.is_symlink()


def test_force_replaces_a_model_folder_atomically(work, tmp_path):
    model = shutil.copytree(work / "model", tmp_path / "model")
    (model / "README.md").write_text("old card")
    assert export_main([str(run_of(work)), "--out", str(model), "--force"]) == 0
    assert (model / "README.md").read_text() != "old card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp left


def test_the_two_rename_fallback_leaves_nothing(work, tmp_path, monkeypatch):
    monkeypatch.setattr(folder_swap, "_exchange", lambda a, b: False)
    model = shutil.copytree(work / "model", tmp_path / "model")
    (model / "README.md").write_text("old card")
    assert export_main([str(run_of(work)), "--out", str(model), "--force"]) == 0
    assert (model / "README.md").read_text() != "old card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_writer_killed_between_its_renames_is_repaired(work, tmp_path):
    """``out`` moved aside as ``<out>.<pid>.old.tmp`` by a dead writer comes back; its new
    temporary folder is deleted; a folder of that name that diffuseq did not write stays."""
    pid = _dead_pid()
    old = shutil.copytree(work / "model", tmp_path / f"model.{pid}.old.tmp")
    new = shutil.copytree(work / "model", tmp_path / f"model.{pid}.tmp")
    (new / "README.md").unlink()  # incomplete
    foreign = tmp_path / f"model.{pid + 1}.tmp"
    foreign.mkdir()
    (foreign / "train.jsonl").write_text("{}\n")
    os.utime(old)
    assert export_main([str(run_of(work)), "--out", str(tmp_path / "model"), "--force"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model", foreign.name], names  # the foreign one is kept
    assert (foreign / "train.jsonl").exists()


@pytest.mark.parametrize(
    "out, needle",
    [(".", "names no folder"), ("x" * 300, "255 bytes")],
    ids=["dot", "long-name"],
)
def test_bad_out_names(work, out, needle, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert export_main([str(run_of(work)), "--out", out, "--force"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert needle in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
