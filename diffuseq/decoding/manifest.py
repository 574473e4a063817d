"""Decode output folders written atomically, with a manifest written last.

Each output file (``seed{S}_step{clamp}.json``) is written to ``<name>.<pid>.tmp`` and renamed
into place when complete; ``--append`` copies the old content into the temporary file first.
``MANIFEST`` (JSON) lists, for every output file, its line count, size and the decode settings
that wrote it, plus the tokenizer's special tokens; it is written once every file is complete
(see :func:`write_outputs` for the exact order). The name has no ``json`` suffix, so that the original's evaluator, which reads every
``*json`` file of the folder (docs/original.md §7), does not take it for an output. Writers of one
folder take turns under its :class:`~diffuseq.store.safe_io.FolderLock`.

A decode killed at any moment therefore leaves each output file complete or absent, and a
folder the evaluator accepts only if the manifest matches its files. :func:`check_folder` is what the evaluator runs: with a manifest, every
``*json`` file must be listed and match its entry; a folder without a manifest (the original's
outputs, or ours from before manifests) is evaluated as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffuseq.errors import DataError
from diffuseq.store.safe_io import (
    FolderLock,
    atomic_write_text,
    contained,
    fsync_dir,
    remove_stale_temp_files,
    temp_name,
)

__all__ = ["MANIFEST_NAME", "check_folder", "read_manifest", "write_outputs"]

MANIFEST_NAME = "MANIFEST"
FORMAT = "diffuseq-decode-outputs"
VERSION = 1


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` if it has none (a ``MANIFEST`` file that is not a
    decode manifest, e.g. another tool's, does not count: ours is written atomically, so it is
    never a partial file).

    Raises:
        DataError: the manifest cannot be read, or is ours but malformed.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(str(path), None, None, f"cannot read the decode manifest ({err})") from None
    except ValueError:  # not JSON: not ours
        return None
    if not (isinstance(data, dict) and data.get("format") == FORMAT):
        return None
    if not isinstance(data.get("files"), dict):
        raise DataError(str(path), None, "files", "missing or not a mapping of file entries")
    return data


def write_outputs(
    folder: str | Path,
    outputs: Mapping[str, Sequence[str]],
    *,
    settings: Mapping[str, Any],
    special_tokens: Mapping[str, str],
    append: bool = False,
) -> list[Path]:
    """Write ``outputs`` (file name -> lines without ``\\n``) into ``folder``, with the manifest.

    Order: every file complete under its temporary name (fsynced), then the manifest listing
    them, then the renames. A kill before the manifest leaves the folder as it was (plus
    temporary files, removed by the next writer); a kill between the renames leaves a manifest
    naming a file that is missing or still has its old content, which :func:`check_folder`
    refuses.

    Args:
        settings: what produced the files (JSON-serialisable), stored with each file's entry.
        special_tokens: the tokenizer's ``sos/eos/sep/pad`` strings (the evaluator's defaults).
        append: add the lines to an existing file instead of replacing it (the original);
            the entry then keeps the earlier settings under ``appended_to``.

    Returns:
        The written paths, in the order of ``outputs``.
    """
    folder = Path(folder)
    paths = [contained(folder, name, "decode output") for name in outputs]
    with FolderLock(folder, what="decode", wait=True):
        remove_stale_temp_files(folder)
        manifest = read_manifest(folder) or {"format": FORMAT, "version": VERSION, "files": {}}
        if append and manifest["files"]:
            _check_entries(folder, manifest, [p.name for p in paths if p.is_file()])
        temps = [temp_name(p) for p in paths]
        try:
            for path, tmp, lines in zip(paths, temps, outputs.values()):
                appended = append and path.is_file()
                _write(tmp, lines, path if appended else None)
                entry = {
                    "lines": _count_lines(tmp),
                    "bytes": tmp.stat().st_size,
                    "settings": dict(settings),
                }
                before = manifest["files"].get(path.name) if appended else None
                if before is not None:  # the settings of the lines above the new ones
                    entry["appended_to"] = [
                        *before.get("appended_to", []),
                        before.get("settings", {}),
                    ]
                manifest["files"][path.name] = entry
            manifest["special_tokens"] = dict(special_tokens)
            manifest["files"] = {  # entries of files removed since are dropped
                name: entry
                for name, entry in sorted(manifest["files"].items())
                if (folder / name).is_file() or name in outputs
            }
            atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            for path, tmp in zip(paths, temps):
                os.replace(tmp, path)
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
        fsync_dir(folder)
    return paths


def _write(tmp: Path, lines: Sequence[str], old: Path | None) -> None:
    with open(tmp, "wb") as handle:
        if old is not None:
            with open(old, "rb") as source:
                shutil.copyfileobj(source, handle)
        handle.write("".join(line + "\n" for line in lines).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _check_entries(folder: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Every file in ``names`` is listed in the manifest and has its recorded size and lines."""
    where = str(folder / MANIFEST_NAME)
    for name in names:
        entry = manifest["files"].get(name)
        path = folder / name
        if entry is None:
            raise DataError(
                str(path),
                None,
                None,
                f"not listed in {where}: it was not written by a finished decode (or by another "
                "program); remove it, or decode again",
            )
        try:
            size = path.stat().st_size
            lines = _count_lines(path)
        except OSError as err:
            raise DataError(str(path), None, None, f"cannot read it ({err.strerror})") from None
        if (size, lines) != (entry.get("bytes"), entry.get("lines")):
            raise DataError(
                str(path),
                None,
                None,
                f"incomplete or changed since it was decoded: {lines} lines and {size} bytes, "
                f"{where} lists {entry.get('lines')} lines and {entry.get('bytes')} bytes; "
                "decode again",
            )


def check_folder(
    folder: str | Path, files: Sequence[str], *, whole: bool = True
) -> dict[str, str] | None:
    """Check the decode files of ``folder`` against its manifest (nothing to check without one).

    Args:
        files: the ``*json`` files the evaluator is about to read.
        whole: also require every listed file to be present (``False``: one file is evaluated).

    Returns:
        The manifest's special tokens (``sos/eos/sep/pad``), or ``None`` without a manifest.

    Raises:
        DataError: a file is not listed, differs from its entry (lines, size), or a listed
            file is missing; the message names the file and the manifest.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    _check_entries(folder, manifest, [os.path.basename(f) for f in files])
    missing = sorted(name for name in manifest["files"] if whole and not (folder / name).is_file())
    if missing:
        raise DataError(
            str(folder / missing[0]),
            None,
            None,
            f"listed in {folder / MANIFEST_NAME} but missing; the folder is incomplete "
            "(decode again)",
        )
    tokens = manifest.get("special_tokens")
    return dict(tokens) if isinstance(tokens, dict) else None
