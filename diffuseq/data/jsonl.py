"""The one JSON-lines reader: training splits, decode inputs and evaluation files.

Every file the toolkit reads line by line is a JSON-lines file of string fields: training data
(``{"src", "trg"}``, docs/original.md §3.1), decode inputs (``{"src"}`` and an optional ``"trg"``)
and decode outputs read by the evaluator (``{"recover", "reference", "source"}``, §7.1). They all
go through :func:`iter_records`, so every bad file gets the same kind of message: a
:class:`~diffuseq.errors.DataError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from diffuseq.errors import DataError

__all__ = ["iter_records", "line_format"]


def line_format(required: Sequence[str], optional: Mapping[str, str] = {}) -> str:
    """The sentence that tells what a line must look like, e.g. for ``("src", "trg")``."""
    example = ", ".join(f'"{name}": "..."' for name in (*required, *optional))
    extra = f" ({', '.join(optional)} optional)" if optional else ""
    return f"every line must be one JSON object such as {{{example}}}{extra}"


def _open(path: Path, flag: str | None, hint: str):
    where = f"{flag} " if flag else ""
    if path.is_dir():
        raise DataError(
            str(path), None, None, f"{where}is a folder; a JSON-lines file is needed here."
        )
    if not path.exists():
        raise DataError(str(path), None, None, f"{where}file not found{hint}.")
    try:
        return path.open("rb")
    except OSError as err:
        raise DataError(str(path), None, None, f"cannot read the file ({err.strerror}).") from err


def iter_records(
    path: str | os.PathLike,
    required: Sequence[str],
    *,
    optional: Mapping[str, str] = {},
    skip_blank: bool = False,
    flag: str | None = None,
    missing_hint: str = "",
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, {field: value})`` for each line, validating it.

    Args:
        path: the file.
        required: fields every line must have, as JSON strings.
        optional: fields that may be absent, with their default values.
        skip_blank: skip blank lines (decode inputs) instead of rejecting them.
        flag: the command-line flag the path came from, named in "not found" messages.
        missing_hint: said after "file not found" (e.g. where the file was looked for).

    Yields:
        1-based line number and the values of ``required`` and ``optional`` fields (other keys of
        a line are ignored; values are not stripped).

    Raises:
        DataError: missing, unreadable or empty file; a folder; non-UTF-8 text; a blank line
            (unless ``skip_blank``); invalid JSON; a line that is not an object; a missing or
            non-string field.
    """
    path = Path(path)
    name = str(path)
    shape = line_format(required, optional)
    count = 0
    hint = f": {missing_hint}" if missing_hint else ""
    with _open(path, flag, hint) as handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        name, line_no, None, f"not UTF-8 text ({err.reason} at byte {err.start})."
                    ) from err
                if not line.strip():
                    if skip_blank:
                        continue
                    raise DataError(name, line_no, None, f"blank line; {shape}.")
                yield line_no, _parse(line, name, line_no, required, optional, shape)
                count += 1
        except OSError as err:
            raise DataError(name, None, None, f"cannot read the file ({err.strerror}).") from err
    if count == 0:
        raise DataError(name, None, None, f"empty file: no examples; {shape}.")


def _parse(
    line: str,
    path: str,
    line_no: int,
    required: Sequence[str],
    optional: Mapping[str, str],
    shape: str,
) -> dict[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            path, line_no, None, f"invalid JSON ({err.msg} at column {err.colno}); {shape}."
        ) from err
    if not isinstance(obj, dict):
        raise DataError(path, line_no, None, f"got a JSON {type(obj).__name__}; {shape}.")
    record = {}
    for field in (*required, *optional):
        if field not in obj:
            if field in optional:
                record[field] = optional[field]
                continue
            raise DataError(path, line_no, field, f"missing; {shape}.")
        value = obj[field]
        if not isinstance(value, str):
            raise DataError(
                path, line_no, field, f"must be a string, got {type(value).__name__} {value!r}."
            )
        record[field] = value
    return record
