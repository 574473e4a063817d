"""Replace a folder the toolkit wrote, atomically, and never one it did not write.

:func:`owned_folder_problem` says why a folder may not be replaced (``None`` when it may): it
must be a real folder (not a link, not a plain file) holding only regular files whose names
the writer lists, among them the required ones. A run folder (checkpoints, a lock), a data
folder (``*.jsonl``), a parent of either (sub-folders) or an unrelated folder fails the test,
so ``diffuseq-export --force`` can name any of them and delete nothing.

:func:`swap_into_place` puts a complete temporary folder under the final name with one
``renameat2(RENAME_EXCHANGE)`` where the platform has it (the final name always holds a
complete folder, old or new); elsewhere with two renames, the old folder kept as
``<name>.<pid>.old.tmp`` until the new one is in place. :func:`remove_stale_temp_dirs` deletes
what a killed writer left (only folders that pass the same test) and renames a moved-aside old
folder back when the writer died between the two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
from collections.abc import Callable, Collection
from pathlib import Path

from diffuseq.store.safe_io import fsync_dir

__all__ = ["owned_folder_problem", "remove_stale_temp_dirs", "swap_into_place"]

_TEMP_DIR_RE = re.compile(r"^\.(\d+)(\.old)?\.tmp$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def owned_folder_problem(
    path: Path,
    *,
    allowed: Collection[str],
    required: Collection[str] = (),
    check: Callable[[Path], str | None] | None = None,
) -> str | None:
    """Why ``path`` is not a folder this toolkit wrote (``None``: it is one).

    Args:
        allowed: the file names the writer may have written; anything else (a sub-folder, a
            link, another file) is someone else's.
        required: names that must be present.
        check: a last test on the folder (e.g. a marker inside a file), returning a reason.
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a folder"
    try:
        entries = list(os.scandir(path))
    except OSError as err:
        return f"it cannot be listed ({err.strerror or err})"
    foreign = sorted(
        e.name
        for e in entries
        if e.name not in allowed or not stat.S_ISREG(e.stat(follow_symlinks=False).st_mode)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        return f"it holds what the toolkit did not write there ({shown})"
    missing = sorted(set(required) - {e.name for e in entries})
    if missing:
        return f"it has no {', '.join(missing)}"
    return check(path) if check is not None else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2``); ``False`` where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Folder ``tmp`` (complete, fsynced) becomes ``out``; an existing ``out`` (already checked
    with :func:`owned_folder_problem`) is deleted once the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return
    if _exchange(tmp, out):
        fsync_dir(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    old = out.with_name(f"{out.name}.{os.getpid()}.old.tmp")
    os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temp_dirs(out: Path, owned: Callable[[Path], bool]) -> None:
    """Tidy what killed writers of ``out`` left: ``<out>.<pid>.old.tmp`` goes back to ``out``
    when ``out`` is missing; other ``<out>.<pid>[.old].tmp`` folders that ``owned`` accepts
    are deleted (never anything ``owned`` rejects, nor a live writer's)."""
    if not out.parent.is_dir():
        return
    prefix = out.name
    for entry in sorted(os.listdir(out.parent)):
        match = _TEMP_DIR_RE.match(entry[len(prefix) :]) if entry.startswith(prefix) else None
        path = out.parent / entry
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        if _alive(int(match.group(1))) or not owned(path):
            continue
        if match.group(2) and not out.exists():
            os.replace(path, out)  # the writer died between its two renames
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True
