"""Safe file writing: atomic writes, an exclusive folder lock, contained output paths.

* :func:`atomic_write` writes ``<name>.<pid>.tmp`` in the target folder, flushes and fsyncs it,
  ``os.replace``s it over the final name and fsyncs the folder: a crash never leaves a truncated
  file under a final name, and two processes never share a temporary file.
* :class:`FolderLock` is an exclusive OS-level lock (``fcntl.flock``) on ``<folder>/run.lock``.
  The kernel releases it when the holding process exits, however it exits (``kill -9``
  included), so a stale lock file never blocks a later run. The file records the holder's pid,
  host and start time, which a refused second process names in its message.
* :func:`path_component` and :func:`contained` keep user-given names (``--dataset``,
  ``--notes``, ``--note``) from leading a path outside its intended parent folder.

The original wrote every file in place with no lock (docs/original.md §6.7).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from diffuseq.errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "FolderLock",
    "atomic_write",
    "atomic_write_text",
    "check_pattern",
    "check_writable_folder",
    "contained",
    "fsync_dir",
    "path_component",
    "remove_stale_temp_files",
    "temp_name",
]

LOCK_NAME = "run.lock"
_TEMP_RE = re.compile(r"^.+\.\d+\.tmp$")


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """``<path>.<pid>.tmp``: this process's temporary file for ``path`` (same folder)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on :func:`temp_name` ``(path)``, fsync, rename over ``path``,
    fsync the folder. On any exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``<name>.<pid>.tmp`` files a killed writer left in ``folder`` (call it while
    holding the folder's :class:`FolderLock`, so that no live writer owns them). Returns them."""
    stale = [p for p in Path(folder).glob("*.tmp") if _TEMP_RE.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ------------------------------------------------------------------------------ lock


class FolderLock:
    """An exclusive lock on ``folder`` held until :meth:`release` or the end of the process.

    Args:
        folder: the folder to lock (created if missing).
        what: how messages name the folder's owner (``"run"``, ``"decode"``).
        wait: block until the holder releases it instead of refusing at once.
        hint: appended to the refusal message (what to do instead).

    Raises:
        ConfigError: another process holds the lock (``wait=False``); the message names the
            folder and the holder's pid, host and start time.
    """

    def __init__(
        self, folder: str | Path, *, what: str = "run", wait: bool = False, hint: str = ""
    ):
        import fcntl

        self._fd: int | None = None
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.folder} is in use by another {what} ({holder}); wait for it to finish"
                + (f" or {hint}" if hint else "")
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (the lock file stays: deleting it would race with a new holder)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


# ------------------------------------------------------------------------------ names


def path_component(value: str, flag: str, *, purpose: str = "the run folder name") -> str:
    """``value`` if it can be part of one file or folder name, else :class:`ConfigError`.

    Rejected: path separators (``/``, ``\\``), ``.`` and ``..``, NUL and other control
    characters. (Rejected rather than rewritten, so that a name is never silently different
    from what was asked.)
    """
    bad = [c for c in ("/", "\\") if c in value]
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        bad.append("control characters")
    if value in (".", ".."):
        bad.append(repr(value))
    if bad:
        raise ConfigError(
            f"{flag} {value!r} cannot be used in {purpose}: it must not contain "
            f"{', '.join(repr(b) if len(b) == 1 else b for b in bad)}; "
            "use letters, digits and - _ . only"
        )
    return value


def check_pattern(pattern: str) -> str:
    """``pattern`` if it can only match files inside the run folder (``--pattern``).

    Raises:
        ConfigError: it holds a path separator or ``..`` (it would glob outside the folder).
    """
    if any(bad in pattern for bad in ("/", "\\", "..")) or Path(pattern).is_absolute():
        raise ConfigError(
            f"--pattern {pattern!r}: a checkpoint file prefix must not contain '/', '\\' or "
            "'..' (only files inside the run folder are decoded); pass e.g. --pattern ema"
        )
    return pattern


def check_writable_folder(path: str | Path, flag: str) -> None:
    """Check, without creating anything, that ``path`` is or can become a writable folder.

    Raises:
        ConfigError: ``path`` (or the nearest existing folder above it) is a file, or is not
            writable.
    """
    if "\x00" in str(path):
        raise ConfigError(f"{flag} {str(path)!r}: a path cannot hold a NUL character")
    too_long = [part for part in Path(path).parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise ConfigError(
            f"{flag} {path}: the name {too_long[0][:60]!r}... is longer than the 255 bytes a file "
            "name may have; pass a shorter path"
        )
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise ConfigError(f"{flag} {path} cannot be a folder{where}; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable; pass another folder")


def contained(parent: str | Path, child: str | Path, what: str) -> Path:
    """``parent / child``, checked to lie inside ``parent`` (after resolving ``..`` and links)
    and to have a name the file system accepts (at most 255 bytes).

    Raises:
        ConfigError: ``child`` leads outside ``parent``, or a name in it is too long.
    """
    path = Path(parent) / child
    base = Path(parent).resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(f"{what} {path} lies outside {parent}; choose a name without '..' or '/'")
    too_long = [part for part in Path(child).parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise ConfigError(
            f"{what} {path}: the name {too_long[0][:60]!r}... is longer than the 255 bytes a file "
            "name may have; use a shorter --notes/--dataset/--note"
        )
    return path
