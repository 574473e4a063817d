"""User-facing error types.

Every error caused by user input (a flag, a data file, a checkpoint) is raised as a
subclass of :class:`UserError`. The command-line entry points catch ``UserError`` and
print its message as one paragraph (no traceback) and exit with status 2. Internal
invariants use ``assert``.
"""

from __future__ import annotations


def first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of the first line of ``text`` (a library's error message), whole; a
    sentence over ``limit`` characters is cut at a word boundary and marked with ``...``."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    for end in (". ", "; "):
        if end in line:
            line = line[: line.index(end) + 1].rstrip(";")
            break
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return line


class UserError(Exception):
    """An error the user can fix: bad flag, bad file, bad checkpoint. Message says how."""


class ConfigError(UserError):
    """Invalid or inconsistent configuration (flags, YAML, training_args.json)."""


class DataError(UserError):
    """Malformed data file. The message names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str):
        where = f"{path}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = path, line, field, problem


class CheckpointError(UserError):
    """A checkpoint or run folder that cannot be used (missing, truncated, wrong keys)."""


class OfflineAssetError(UserError):
    """A hub asset (tokenizer, config, model) is not available offline."""
