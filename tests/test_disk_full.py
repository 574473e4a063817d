"""Issue 24: a full disk during a checkpoint write or an export is one clean message (exit 2,
no traceback) naming the last complete checkpoint; no half-written file is left."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from diffuseq.cli.common import run_cli
from diffuseq.cli.export import main as export_main
from diffuseq.cli.train import main as train_main
from tests.train_helpers import make_tiny_data, tiny_argv


def _full_disk(monkeypatch, failing: str) -> None:
    """``torch.save`` raises ENOSPC when it writes a file whose name starts with ``failing``."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        name = Path(getattr(f, "name", str(f))).name
        if name.startswith(failing):
            f.write(b"partial")  # some bytes reach the disk first
            raise OSError(errno.ENOSPC, "No space left on device", str(getattr(f, "name", f)))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def _message(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count(f"{prog}: error:") == 1, err
    return " ".join(err.split())


@pytest.mark.parametrize("failing", ["state_000004", "ema_0.9999_000004"])
def test_training_save_on_a_full_disk(tmp_path, monkeypatch, capsys, failing):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    _full_disk(monkeypatch, failing)
    argv = tiny_argv(data, checkpoint_path=run, learning_steps=6, save_interval=2)
    assert train_main(argv) == 2
    message = _message(capsys, "run_train.py")
    assert "cannot save step 4" in message and "No space left on device" in message
    assert f"the last complete checkpoint is {run / 'state_000002.pt'}" in message
    assert "--resume_checkpoint auto" in message
    assert not list(run.glob("*.tmp")), list(run.glob("*.tmp"))
    assert not (run / "state_000004.pt").exists() and not (run / "state_000006.pt").exists()
    assert json.loads((run / "latest.json").read_text())["step"] == 2
    monkeypatch.undo()  # disk freed: the run continues from step 2
    assert train_main([*argv, "--resume_checkpoint", "auto"]) == 0
    assert (run / "state_000006.pt").is_file()


def test_export_on_a_full_disk(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(data, checkpoint_path=run, learning_steps=2, save_interval=2)
    assert train_main([*argv, "--export_model", "false"]) == 0
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "model"
    assert export_main([str(run), "--out", str(out)]) == 2
    message = _message(capsys, "diffuseq-export")
    assert f"cannot write the model folder {out}: No space left on device" in message
    assert "ema_0.9999_000002.pt" in message
    assert not out.exists() and not list(tmp_path.glob("model*"))


def test_any_full_disk_error_is_one_line(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/log.txt")

    assert run_cli(main, [], "prog") == 2
    err = capsys.readouterr().err
    assert (
        err
        == "prog: error: No space left on device (/x/log.txt); free space on that disk and run again\n"
    )


def test_other_os_errors_are_not_hidden():
    def main(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        run_cli(main, [], "prog")
