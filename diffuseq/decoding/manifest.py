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
import re
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

__all__ = [
    "MANIFEST_NAME",
    "check_folder",
    "finish_interrupted",
    "read_manifest",
    "write_outputs",
]

_TEMP_RE = re.compile(r"^(.+)\.\d+\.tmp$")  # safe_io.temp_name: <name>.<pid>.tmp

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
    for name, entry in data["files"].items():
        if not isinstance(entry, dict):
            raise DataError(
                str(path),
                None,
                f"files.{name}",
                f"{entry!r} is not a file entry (an object with lines, bytes and settings); "
                "the manifest was edited: decode again",
            )
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
        manifest = read_manifest(folder) or {"format": FORMAT, "version": VERSION, "files": {}}
        finish_interrupted(folder, manifest)
        remove_stale_temp_files(folder)
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
                    "append": append,  # how an interrupted write is settled (finish_interrupted)
                }
                before = manifest["files"].get(path.name) if appended else None
                if before is not None:  # the settings of the lines above the new ones
                    entry["appended_to"] = [
                        *before.get("appended_to", []),
                        before.get("settings", {}),
                    ]
                    entry["before"] = {"lines": before.get("lines"), "bytes": before.get("bytes")}
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


def finish_interrupted(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Settle a writer killed between its manifest and its renames (call under the folder's
    lock). Its leftover ``<name>.<pid>.tmp`` files match their manifest entries (they are
    fsynced before the manifest is written); the decode job they belong to (``settings.job``)
    is then

    * completed when it overwrote its files: the leftovers are renamed into place, which is
      what the decode had finished computing;
    * rolled back when it appended (``--append``): files already renamed are cut back to their
      size before the append, the entries get their earlier values back, so that running the
      stopped command again appends its lines once.

    Returns:
        What was done (for the log), or ``None`` when nothing was left over. ``manifest`` is
        updated (and written) in place.
    """
    files = manifest.get("files", {})
    leftovers: dict[str, Path] = {}
    for tmp in sorted(folder.glob("*.tmp")):
        match = _TEMP_RE.match(tmp.name)
        entry = files.get(match.group(1)) if match else None
        if isinstance(entry, dict) and tmp.is_file() and _matches(tmp, entry):
            leftovers[match.group(1)] = tmp
    jobs = {_job(files[name]) for name in leftovers} - {None}
    if not jobs:
        return None
    names = sorted(n for n, e in files.items() if isinstance(e, dict) and _job(e) in jobs)
    if any(files[name].get("append") for name in names):
        for name in names:
            _roll_back(folder, name, files, leftovers.get(name))
        done = f"rolled back the --append decode stopped before renaming {', '.join(names)}"
    else:
        for name, tmp in leftovers.items():
            os.replace(tmp, folder / name)
        done = f"completed {', '.join(sorted(leftovers))}, left by a decode stopped before renaming"
    fsync_dir(folder)
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    from diffuseq.runtime.logger import get_logger  # lazily: the evaluator's --help has no torch

    get_logger("decode").info("%s: %s", folder, done)
    return done


def _job(entry: Mapping[str, Any]) -> str | None:
    settings = entry.get("settings")
    return settings.get("job") if isinstance(settings, dict) else None


def _roll_back(folder: Path, name: str, files: dict[str, Any], tmp: Path | None) -> None:
    """Undo one file of an interrupted append: its content and its manifest entry."""
    entry, path = files[name], folder / name
    before = entry.get("before")
    if tmp is not None:
        tmp.unlink(missing_ok=True)  # not renamed: the file still has its earlier content
    elif path.is_file() and _matches(path, entry):  # renamed: cut the appended lines off
        if before is None:
            path.unlink()
        else:
            os.truncate(path, before["bytes"])
    if before is None:
        del files[name]
        return
    history = list(entry.get("appended_to", []))
    files[name] = {"lines": before["lines"], "bytes": before["bytes"], "settings": history[-1]}
    if history[:-1]:
        files[name]["appended_to"] = history[:-1]


def _matches(path: Path, entry: Mapping[str, Any]) -> bool:
    try:
        return (path.stat().st_size, _count_lines(path)) == (entry.get("bytes"), entry.get("lines"))
    except OSError:
        return False


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
