"""Hand-edited run files: ``config.yaml`` and ``training_args.json`` against the checkpoint.

A run folder's ``config.yaml`` and ``training_args.json`` are a record of the run, written by
every launch; what a run is continued or decoded with comes from its training state (the
config saved in every ``state_*.pt``) and the command line, never from an edited file. An edit
is therefore refused or reported, never silently ignored:

* fields that define the model (sections ``model`` and ``diffusion``, but not
  ``model.attention``; ``data.seq_len``, ``data.vocab``, ``discrete.discrete_schedule``): a file that disagrees with the checkpoint is refused, when
  a run continues and when it is decoded (the weights belong to the checkpoint's values);
* any other field (``lr``, ``learning_steps``, ...), when a run continues: a warning names the
  field, the file's value and the value used (the checkpoint's, or this command's flag); the
  launch then rewrites the file with the values used.

A field counts as edited when the file's value is neither the checkpoint's nor this launch's
(a file written by a launch that was stopped before it saved holds that launch's values).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffuseq.config import RunConfig
from diffuseq.errors import ConfigError

__all__ = ["FIXED_FIELDS", "check_decode_config", "check_resume_files", "fixed_field"]

_FIXED_SECTIONS = ("model", "diffusion")
FIXED_FIELDS = ("data.seq_len", "data.vocab", "discrete.discrete_schedule")
_KERNELS = ("model.attention",)  # how the same weights are computed: not model-defining
# vocab_size: filled in from the tokenizer (checked against it elsewhere); the paths of a launch
_IGNORED = ("model.vocab_size", "train.checkpoint_path", "train.resume_checkpoint")
_IGNORED += ("vocab_size", "checkpoint_path", "resume_checkpoint")


def fixed_field(name: str) -> bool:
    """Whether ``section.field`` defines the model (it cannot change for a trained run)."""
    if name in _KERNELS:
        return False
    return name.split(".")[0] in _FIXED_SECTIONS or name in FIXED_FIELDS


def _flat(config: RunConfig) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


def _edited(file: Mapping, saved: Mapping, used: Mapping) -> list[tuple[str, Any, Any, Any]]:
    """``(name, file value, saved value, used value)`` where the file holds its own value."""
    return [
        (name, value, saved.get(name), used.get(name))
        for name, value in file.items()
        if name not in _IGNORED and value != saved.get(name) and value != used.get(name)
    ]


def _args_name(key: str, config: RunConfig) -> str:
    """The ``section.field`` of a ``training_args.json`` key (``key`` itself if none)."""
    for section, values in config.to_dict().items():
        if key in values:
            return f"{section}.{key}"
    return key


def check_resume_files(
    run_dir: Path,
    *,
    state: Path,
    saved: RunConfig,
    saved_args: Mapping[str, Any],
    config: RunConfig,
    training_args: Mapping[str, Any],
) -> list[str]:
    """Compare the run folder's files with the state's config (``saved``, ``saved_args``) and
    this launch's (``config``, ``training_args``) before a run continues.

    Returns:
        One warning per edited field that is not fixed (the used value wins).

    Raises:
        ConfigError: a file cannot be read, or edits a field that defines the model.
    """
    warnings: list[str] = []
    refused: list[str] = []
    yaml_file, args_file = run_dir / "config.yaml", run_dir / "training_args.json"
    found: list[tuple[Path, list[tuple[str, Any, Any, Any]]]] = []
    if yaml_file.is_file():
        try:
            file = RunConfig.load_yaml(yaml_file)
        except ConfigError as err:
            raise ConfigError(
                f"{err} (the run continues from {state}, which holds its config; restore "
                f"{yaml_file.name} or delete it: this launch writes it again)"
            ) from None
        found.append((yaml_file, _edited(_flat(file), _flat(saved), _flat(config))))
    if args_file.is_file():
        import json

        try:
            args = json.loads(args_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{args_file}: cannot read it as JSON ({err}); restore it or delete it: this "
                "launch writes it again"
            ) from None
        if not isinstance(args, dict):
            raise ConfigError(f"{args_file}: expected a JSON object; restore or delete it")
        saved_args = saved_args or saved.to_training_args()
        found.append((args_file, _edited(args, saved_args, training_args)))
    for path, rows in found:
        for name, value, old, used in rows:
            field = name if "." in name else _args_name(name, saved)
            where = f"{path}: {name} is {value!r}"
            if fixed_field(field):
                refused.append(f"{where}, but {state.name} was trained with {old!r}")
            else:
                origin = "the checkpoint's" if used == old else "this command's"
                warnings.append(
                    f"{where}; {origin} value {used!r} is used (editing the file does not "
                    "change a run: set it with its command-line flag) and the file is rewritten"
                )
    if refused:
        raise ConfigError(
            "cannot continue the run: its files were edited in fields that define the model ("
            + "; ".join(refused)
            + "). A trained run keeps its model: restore the files (or delete them: this launch "
            "writes them again from the checkpoint), or start a new run"
        )
    return warnings


def check_decode_config(path: Path, file: RunConfig, saved: RunConfig, state: Path) -> None:
    """Refuse to decode with a ``config.yaml`` (``path``, read as ``file``) whose model-defining
    fields differ from the config saved in the run's newest training state ``state``.

    Raises:
        ConfigError: naming the file, every differing field and both values.
    """
    flat, stored = _flat(file), _flat(saved)
    diffs = [
        f"{name} is {value!r} there but {stored.get(name)!r} in {state.name}"
        for name, value in flat.items()
        if fixed_field(name) and name not in _IGNORED and value != stored.get(name)
    ]
    if diffs:
        raise ConfigError(
            f"{path} was edited: "
            + "; ".join(diffs)
            + ". Decoding rebuilds the model from it, and these fields must be the ones the "
            "weights were trained with: restore the file (decode-time settings are flags: "
            "--step, --sampler, ...)"
        )
