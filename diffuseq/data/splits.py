"""The split files of a data folder (``train.jsonl``, ``valid.jsonl``, ``test.jsonl``), checked
without torch, so that a command reports a missing data folder before its heavy imports."""

from __future__ import annotations

import os
from pathlib import Path

from diffuseq.errors import ConfigError, DataError

__all__ = ["SPLITS", "split_file"]

SPLITS = ("train", "valid", "test")


def split_file(data_dir: str | os.PathLike, split: str) -> Path:
    """``{data_dir}/{split}.jsonl``, checked to exist.

    Raises:
        ConfigError: ``split`` is not one of ``train``, ``valid``, ``test``.
        DataError: the folder or the split file is missing (the message lists what is there).
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}.")
    folder = Path(data_dir)
    path = folder / f"{split}.jsonl"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "folder not found"
        raise DataError(str(folder), None, None, f"--data_dir {what}.{_readme_hint(folder)}")
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.jsonl")) or ["no .jsonl files"]
        raise DataError(
            str(path),
            None,
            None,
            f"the '{split}' split file {path.name} is missing from --data_dir {folder} "
            f"(found: {', '.join(present)}). A data folder holds train.jsonl, valid.jsonl and "
            "test.jsonl.",
        )
    return path


def _readme_hint(folder: Path) -> str:
    """`` See <datasets>/README.md ...`` when the missing folder's parent has a README (the
    repository's ``datasets/``: how to get the paper's datasets and their format)."""
    readme = folder.parent / "README.md"
    if not readme.is_file():
        return ""
    return f" See {readme} for how to get the {folder.name} data and the folder's format."
