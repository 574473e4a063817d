"""Declaring config fields (help text, original flag name, choices) and reading them back.

Every config of the toolkit is a frozen dataclass whose fields are declared with :func:`opt`:
one declaration gives the default, the help text, the command-line flag (the field name, or
the original's name such as ``--bsz``), the choices and the argument group. The command-line
parsers are generated from these declarations (:mod:`diffuseq.cli.flags`); dictionaries
(YAML presets, saved configs, JSON) are read back with :func:`read_layer`, which accepts
field or flag names and coerces the types.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
import reprlib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from diffuseq.errors import ConfigError

#: ``choices`` of a field: a tuple, or a function returning one (for registries whose import
#: is expensive, resolved only when a parser is built or a value is validated).
Choices = tuple[str, ...] | Callable[[], tuple[str, ...]]


def opt(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Choices | None = None,
    metavar: str | None = None,
    group: str | None = None,
    recipe: bool = False,
    in_weights: bool | str = False,
):
    """A dataclass field with CLI metadata.

    Args:
        default: the default value (also shown by ``--help`` unless ``help`` names one).
        help: one-line help text.
        flag: the command-line name when it differs from the field name (the original's,
            e.g. ``bsz``); ``--<field name>`` is accepted as well.
        choices: allowed values (or a function returning them).
        metavar: the value's placeholder in ``--help``.
        group: the ``--help`` section (default: the config's title).
        recipe: a recipe choice of a training run: a model card lists it in its recipe table
            (:mod:`diffuseq.store.model_card`).
        in_weights: an architecture value a checkpoint's shapes reveal: when a checkpoint does
            not fit, the message names it and what to set (:mod:`diffuseq.store.checkpoint_format`):
            ``True`` for its flag, or a text where ``{flag}`` stands for ``--<flag>``.
    """
    return field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "choices": choices,
            "metavar": metavar,
            "group": group,
            "recipe": recipe,
            "in_weights": in_weights,
        },
    )


def str2bool(value: str | bool) -> bool:
    """The original's boolean parser: yes/true/t/y/1 and no/false/f/n/0, any case."""
    if isinstance(value, bool):
        return value
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def flag_name(f: Field) -> str:
    """The command-line name of a field (without ``--``)."""
    return f.metadata.get("flag") or f.name


def flag_text(f: Field) -> str:
    """``--<flag name>`` of a field, as messages and model cards show it."""
    return f"--{flag_name(f)}"


def recipe_fields(sections: Mapping[str, type]) -> tuple[tuple[str, str, str], ...]:
    """``(section, field, --flag)`` of every field declared ``recipe=True``, in declaration order."""
    return tuple(
        (section, f.name, flag_text(f))
        for section, kind in sections.items()
        for f in fields(kind)
        if f.metadata.get("recipe")
    )


def weights_hints(kind: type) -> dict[str, str]:
    """Field name -> what to set, for the fields of ``kind`` declared with ``in_weights``."""
    return {
        f.name: flag_text(f) if hint is True else hint.format(flag=flag_text(f))
        for f in fields(kind)
        if (hint := f.metadata.get("in_weights"))
    }


def field_choices(f: Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def field_type(kind: type, name: str) -> tuple[type, bool, bool]:
    """``(base type, optional, repeated)`` of field ``name``: ``int | None`` gives
    ``(int, True, False)``, ``tuple[str, ...]`` gives ``(str, False, True)``."""
    hint = get_type_hints(kind)[name]
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        hint, optional = args[0], True
    if get_origin(hint) is tuple:
        return get_args(hint)[0], optional, True
    return hint, optional, False


def coerce(kind: type, name: str, value: Any, *, label: str | None = None) -> Any:
    """``value`` (from YAML/JSON/flags) as the type of field ``name`` of ``kind``; errors
    name ``label`` (e.g. ``preset.yaml: bsz``), default the field name.

    Strict, so that a value is never silently different from what was written: an int field
    takes whole numbers only (``8.5`` and ``true`` are errors, ``8.0``, ``"8"`` and numpy
    integers are read as 8), a float field numbers and numeric text (``1e-4``, which YAML 1.1
    reads as text) but no boolean, a bool field booleans, 0/1 and the flag words
    (``true``/``no``/...), a text field text and numbers (``ema_rate: 0.9999``) but no boolean
    (YAML reads an unquoted ``no`` as false) and no list; ``None`` (an empty ``key:``) only
    where the field is optional.
    """
    base, optional, repeated = field_type(kind, name)
    if value is None and optional:
        return None
    try:
        if repeated:
            items = [value] if isinstance(value, str) else _items(value)
            return tuple(_coerce_one(base, item) for item in items)
        return _coerce_one(base, value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ConfigError(
            f"{label or name}: cannot read {_short(value)} as {base.__name__} ({err})"
        ) from None


def _items(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"expected a list, got {type(value).__name__}")


def _short(value: Any) -> str:
    """A bounded ``repr`` (a YAML alias bomb must not be expanded into a message)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring = 2, 4, 4, 60
    return short.repr(value)


def is_bool(value: Any) -> bool:
    """A Python or numpy boolean (numpy is not imported for it)."""
    kind = type(value)
    return isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    )


def _coerce_one(base: type, value: Any) -> Any:
    if value is None:
        raise TypeError("no value (an empty `key:` in YAML); give one or leave the key out")
    if isinstance(value, (Mapping, list, tuple, set)):
        raise TypeError(f"expected one {base.__name__}, got a {type(value).__name__}")
    if base is bool:
        if isinstance(value, str) or is_bool(value):
            return str2bool(value) if isinstance(value, str) else bool(value)
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    if is_bool(value):
        if base is str:
            raise TypeError(
                "a boolean, not text: YAML reads unquoted yes/no/on/off as booleans; quote it"
            )
        raise TypeError("a boolean, not a number")
    if base is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not a whole number (it would be cut to {int(value)})")
        if isinstance(value, (float, str)):
            return int(value) if isinstance(value, float) else int(value.strip())
        raise TypeError(f"expected a whole number, got {type(value).__name__}")
    if base is float:
        if isinstance(value, (numbers.Real, str)):
            return float(value)
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if base is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if isinstance(value, numbers.Real):
            return str(value)
        raise TypeError(f"expected text, got {type(value).__name__}")
    return base(value)


def key_map(kinds: Iterable[type]) -> dict[str, str]:
    """Every accepted key (field name and flag name) -> field name."""
    out: dict[str, str] = {}
    for kind in kinds:
        for f in fields(kind):
            out[f.name] = f.name
            out[flag_name(f)] = f.name
    return out


def read_layer(data: Mapping[str, Any], kinds: Iterable[type], *, source: str) -> dict[str, Any]:
    """Field name -> typed value for the keys of ``data`` (field or flag names of ``kinds``).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type; the message names ``source``.
    """
    kinds = list(kinds)
    known = {
        key: (kind, f.name)
        for kind in kinds
        for f in fields(kind)
        for key in (f.name, flag_name(f))
    }
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    out = {}
    for key, value in data.items():
        kind, name = known[key]
        out[name] = coerce(kind, name, value, label=f"{source}: {key}")
    return out


def values_from_dict(kind: type, data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The fields of ``kind`` present in ``data`` (field or flag names), typed; other keys are
    ignored."""
    return read_layer(
        {k: v for k, v in data.items() if k in key_map([kind])}, [kind], source=source
    )


class FlagConfig:
    """Dict round trip and ``replace`` for a frozen dataclass declared with :func:`opt`."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), ready for YAML or JSON."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config"):
        """Build from field or flag names; unknown keys and unreadable values name ``source``."""
        return cls(**read_layer(data, [cls], source=source))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file.

    A preset may start from another one: ``base: qqp.yaml`` (a path relative to the preset's
    folder) reads that file first and lets this file's keys replace its values, so a recipe
    preset names only what it changes. Bases may chain; a cycle is an error.
    """
    return _read_yaml(Path(path), ())


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; pass a YAML file such as configs/qqp.yaml")
    if not path.is_file():
        via = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path}{via} does not exist")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"), path) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: 'base' must name another preset file, got {base!r}")
    base_path = (path.parent / base).resolve()
    seen = (*chain, path.resolve())
    if base_path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, base_path))
        raise ConfigError(f"{path}: 'base' presets form a cycle ({cycle})")
    return {**_read_yaml(base_path, seen), **data}


#: Bounds of a config file: its size, the aliases (``*name``) it uses and the depth of its
#: nesting. A preset is a flat or sectioned mapping (depth 2, a few hundred bytes); the bounds
#: keep an "alias bomb" (aliases of aliases, exponential once expanded) or a huge file from
#: running for minutes.
MAX_YAML_BYTES, MAX_YAML_ALIASES, MAX_YAML_DEPTH = 1 << 20, 100, 20


def safe_yaml(text: str, path: str | Path) -> Any:
    """``yaml.safe_load(text)`` within the bounds above (ConfigError naming ``path``)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {len(text)} characters; a config file may have at most {MAX_YAML_BYTES}"
        )
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if aliases > MAX_YAML_ALIASES or depth > MAX_YAML_DEPTH:
            what = (
                f"more than {MAX_YAML_ALIASES} aliases"
                if aliases > MAX_YAML_ALIASES
                else (f"nesting deeper than {MAX_YAML_DEPTH}")
            )
            raise ConfigError(f"{path}: {what}; a config file is a mapping of option values")
    return yaml.safe_load(text)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2))


def raise_first(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def choice_check(flag: str, value: Any, choices: Iterable[str]) -> tuple[bool, str]:
    """An ``(ok, message)`` check that ``--flag value`` is one of ``choices``."""
    choices = tuple(choices)
    return value in choices, f"--{flag} {value!r} is unknown; choose one of {', '.join(choices)}"


def finite_check(flag: str, value: Any) -> tuple[bool, str]:
    """An ``(ok, message)`` check that ``--flag value`` is a finite number (``nan`` and
    ``inf`` parse as floats, from a flag or a YAML ``.inf``, but no setting means them)."""
    ok = value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )
    return ok, f"--{flag} {value!r} is not a finite number; give a number such as 0.5"


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def type_checks(config: Any) -> list[tuple[bool, str]]:
    """``(ok, message)``: every field of ``config`` holds its declared type (a config built in
    Python, e.g. ``DecodeConfig(ddim_adjacent="false")``, is not coerced; a string is truthy)."""
    kind, checks = type(config), []
    for f in fields(config):
        base, optional, repeated = field_type(kind, f.name)
        value = getattr(config, f.name)
        values = value if repeated and isinstance(value, (tuple, list)) else [value]
        ok = (value is None and optional) or all(_is_a(base, v) for v in values)
        shown = _short(value)
        word = _TYPE_WORDS.get(base, base.__name__)
        checks.append((ok, f"--{flag_name(f)} {shown} is a {type(value).__name__}; give {word}"))
    return checks


def _is_a(base: type, value: Any) -> bool:
    if base is bool:
        return is_bool(value)
    if base in (int, float):
        kind = numbers.Integral if base is int else numbers.Real
        return isinstance(value, kind) and not is_bool(value)
    return isinstance(value, (str, os.PathLike)) if base is str else isinstance(value, base)


def plain_values(config: Any) -> Any:
    """``config`` with numpy scalars (``np.int64(8)``, ``np.bool_``) as Python ones and paths
    as text (itself when it holds none): numpy integers are accepted as integers."""
    changes = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if type(value).__module__ == "numpy" and hasattr(value, "item"):
            changes[f.name] = value.item()
        elif isinstance(value, os.PathLike):
            changes[f.name] = os.fspath(value)
    return dataclasses.replace(config, **changes) if changes else config


def choice_checks(config: Any) -> list[tuple[bool, str]]:
    """:func:`type_checks`, then :func:`finite_check` for every float field of ``config``, then
    :func:`choice_check` for every field declared with choices."""
    kind = type(config)
    return [
        *type_checks(config),
        *(
            finite_check(flag_name(f), getattr(config, f.name))
            for f in fields(config)
            if field_type(kind, f.name)[0] is float
        ),
        *(
            choice_check(flag_name(f), getattr(config, f.name), choices)
            for f in fields(config)
            if (choices := field_choices(f))
        ),
    ]
