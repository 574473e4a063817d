"""Command-line parsers generated from the config dataclasses (:mod:`diffuseq.config`).

One flag per field: ``--<flag or field name>`` (plus ``--<field name>`` when the original used
another name, e.g. ``--bsz`` and ``--batch_size``), typed from the annotation, with the field's
choices, metavar and ``--help`` group. ``--help`` shows each default once: appended as
``(default: ...)`` unless the help text already states it.

Parser defaults are ``None``, so that :func:`given_flags` returns only what was typed on the
command line; the training CLI layers those over a ``--config`` preset
(:meth:`diffuseq.config.RunConfig.from_layers`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, Field, fields
from typing import Any, TypeVar

from diffuseq.config.fields import field_choices, field_type, flag_name, str2bool
from diffuseq.errors import ConfigError

__all__ = ["ConfigParser", "add_dataclass_flags", "build_parser", "config_from_args", "given_flags"]

T = TypeVar("T")


class ConfigParser(argparse.ArgumentParser):
    """Argument errors become :class:`ConfigError` (one paragraph, exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def build_parser(
    prog: str, description: str | None, sections: Sequence[tuple[type, str]]
) -> ConfigParser:
    """A parser with the flags of each ``(dataclass, --help title)``, in that order."""
    parser = ConfigParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for kind, title in sections:
        add_dataclass_flags(parser, kind, title=title)
    return parser


def add_dataclass_flags(
    parser: argparse.ArgumentParser, kind: type, *, title: str | None = None
) -> None:
    """Add one flag per field of ``kind`` (defaults ``None``: see the module docstring).

    Fields go to the argument group named by their ``group`` metadata, else ``title``.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(kind):
        name = f.metadata.get("group") or title or kind.__name__
        if name not in groups:
            groups[name] = _group(parser, name)
        flag = flag_name(f)
        names = [f"--{flag}"] + ([f"--{f.name}"] if flag != f.name else [])
        groups[name].add_argument(*names, **_argument(kind, f))


def _group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    for group in parser._action_groups:  # several dataclasses may share a group
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def _argument(kind: type, f: Field) -> dict[str, Any]:
    base, _, repeated = field_type(kind, f.name)
    kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text(f)}
    if base is bool:
        kwargs.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
    elif repeated:
        kwargs.update(type=base, action="append")
    else:
        kwargs.update(type=base)
    if choices := field_choices(f):
        kwargs["choices"] = choices
    if f.metadata.get("metavar"):
        kwargs["metavar"] = f.metadata["metavar"]
    elif base is not bool and "choices" not in kwargs:
        kwargs["metavar"] = flag_name(f).upper()  # --bsz BSZ, not --bsz BATCH_SIZE
    return kwargs


def help_text(f: Field) -> str:
    """The field's help, with ``(default: ...)`` appended unless the text already gives one."""
    text = " ".join(str(f.metadata.get("help", "")).split())
    if "default" not in text.lower() and f.default is not MISSING:
        text += f" (default: {_shown(f.default)})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def _shown(value: Any) -> str:
    if value is None or value == ():
        return "none"
    return repr(value) if isinstance(value, str) else str(value)


def given_flags(namespace: argparse.Namespace, kind: type) -> dict[str, Any]:
    """The fields of ``kind`` that were given on the command line (repeated flags as tuples)."""
    out = {}
    for f in fields(kind):
        value = getattr(namespace, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_args(namespace: argparse.Namespace, kind: type[T]) -> T:
    """``kind`` with its defaults overridden by the flags given on the command line."""
    return kind(**given_flags(namespace, kind))
