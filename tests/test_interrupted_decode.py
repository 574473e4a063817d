"""Issue 24: a decode killed between its MANIFEST write and its renames does not leave the
folder stuck. The next decode settles it: an interrupted ``--append`` is rolled back (running
the command again appends its lines once), an interrupted overwrite is completed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffuseq.decoding import manifest as manifest_module
from diffuseq.decoding.manifest import check_folder, read_manifest, write_outputs

NAMES = ["seed101_step0.json", "seed102_step0.json"]


class Killed(BaseException):
    """Stands for SIGKILL: what the writer had on disk stays (the temporary files too)."""


def _write(folder: Path, job: str, lines: list[str], *, append: bool = False) -> None:
    write_outputs(
        folder,
        {name: [f'{{"recover": "{line}"}}' for line in lines] for name in NAMES},
        settings={"job": job},
        special_tokens={"pad": "[PAD]"},
        append=append,
    )


def _killed_after(monkeypatch, renames: int) -> None:
    """The writer dies after ``renames`` output renames (the MANIFEST rename is let through)."""
    real, done = os.replace, []

    def replace(src, dst):
        if Path(dst).name in NAMES:
            if len(done) == renames:
                saved = {p: p.read_bytes() for p in Path(dst).parent.glob("*.tmp")}
                monkeypatch.setattr(Path, "unlink", _restore_after(saved))
                raise Killed
            done.append(dst)
        return real(src, dst)

    monkeypatch.setattr(manifest_module.os, "replace", replace)


def _restore_after(saved: dict[Path, bytes]):
    """``Path.unlink`` that keeps the writer's temporary files (a killed process has no
    ``finally``)."""
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self in saved:
            return None
        return real(self, missing_ok=missing_ok)

    return unlink


def _kill(monkeypatch, folder: Path, job: str, lines: list[str], *, append: bool, renames: int):
    _killed_after(monkeypatch, renames)
    with pytest.raises(Killed):
        _write(folder, job, lines, append=append)
    monkeypatch.undo()
    assert list(folder.glob("*.tmp")), "the kill left temporary files"


def _lines(folder: Path, name: str) -> list[str]:
    return (folder / name).read_text().splitlines()


@pytest.mark.parametrize("renames", [0, 1])
def test_an_interrupted_append_is_rolled_back_then_appended_once(monkeypatch, tmp_path, renames):
    folder = tmp_path / "samples"
    _write(folder, "first", ["a", "b"])
    before = {name: (folder / name).read_bytes() for name in NAMES}
    _kill(monkeypatch, folder, "second", ["c"], append=True, renames=renames)
    with pytest.raises(Exception, match="MANIFEST|decode again"):  # stuck for the evaluator
        check_folder(folder, NAMES)
    _write(folder, "again", ["c"], append=True)  # the same command again
    for name in NAMES:
        assert _lines(folder, name) == [*before[name].decode().splitlines(), '{"recover": "c"}']
    assert check_folder(folder, NAMES) == {"pad": "[PAD]"}
    entries = read_manifest(folder)["files"]
    assert [e["settings"]["job"] for e in entries.values()] == ["again", "again"]
    assert [e["appended_to"] for e in entries.values()] == [[{"job": "first"}]] * 2
    assert not list(folder.glob("*.tmp"))


def test_an_interrupted_append_to_new_files_is_removed(monkeypatch, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    _kill(monkeypatch, folder, "new", ["x"], append=True, renames=1)
    _write(folder, "again", ["x"], append=True)
    for name in NAMES:
        assert _lines(folder, name) == ['{"recover": "x"}']
    assert check_folder(folder, NAMES) is not None


@pytest.mark.parametrize("renames", [0, 1])
def test_an_interrupted_overwrite_is_completed(monkeypatch, tmp_path, renames):
    folder = tmp_path / "samples"
    _write(folder, "first", ["a", "b"])
    _kill(monkeypatch, folder, "second", ["c", "d", "e"], append=False, renames=renames)
    # any next decode in the folder settles it first: here one that appends to the files
    _write(folder, "third", ["f"], append=True)
    for name in NAMES:
        assert _lines(folder, name) == [f'{{"recover": "{x}"}}' for x in "cdef"]
    assert check_folder(folder, NAMES) is not None
    assert not list(folder.glob("*.tmp"))
