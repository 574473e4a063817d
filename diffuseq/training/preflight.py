"""The first checks of a training run, which need neither torch nor transformers: run by
``run_train.py`` right after parsing (and by :mod:`diffuseq.training.api` first), so that a
missing data folder or a mistyped run folder is reported in a second, not after the imports.

* A new run (``--resume_checkpoint none``, or ``auto`` on a folder without training states):
  ``--data_dir`` must hold ``train.jsonl`` and ``valid.jsonl``
  (:func:`~diffuseq.data.splits.split_file`; a missing folder next to a ``README.md``, as
  ``datasets/QQP``, names it).
* ``--resume_checkpoint auto`` on a run folder that does not exist, with neither ``--config``
  nor ``--data_dir`` given, is a mistyped folder, not a new run: the message says so and names
  the folders of the same parent that look alike.

The rest (the states themselves, the tokenizer, the config of a continued run) is checked by
:func:`diffuseq.training.setup.resolve` as before.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from diffuseq.config import SECTIONS, RunConfig
from diffuseq.data.splits import split_file
from diffuseq.errors import CheckpointError, ConfigError, DataError

__all__ = ["extend_hint", "given_keys", "preflight"]

#: What a run folder with something to continue holds (diffuseq.store.checkpoint's names).
_STATE_PATTERNS = ("latest.json", "state_*.pt")


def given_keys(layers: Iterable[tuple[Mapping[str, Any], str]]) -> set[str]:
    """The config keys that ``layers`` (a preset, the flags) set, sections flattened."""
    keys: set[str] = set()
    for mapping, _ in layers:
        for key, value in mapping.items():
            keys |= set(value) if key in SECTIONS and isinstance(value, Mapping) else {key}
    return keys


def preflight(config: RunConfig, *, given: set[str] | None = None) -> None:
    """Check the paths a run needs before anything heavy is imported.

    Args:
        given: the keys the user set (preset and flags, :func:`given_keys`, plus ``"config"``
            for a preset); ``None``: a config built in Python, whose every value counts as given.

    Raises:
        CheckpointError: ``--resume_checkpoint auto`` names a run folder that does not exist
            and nothing says this is a new run.
        DataError: a new run's data folder or split file is missing.
    """
    tr = config.train
    spec = (tr.resume_checkpoint or "").strip()
    if spec.lower() not in ("", "none", "auto") or (spec == "auto" and not tr.checkpoint_path):
        return  # a file or folder to resume from (it may bring its config): checked later
    folder = Path(tr.checkpoint_path)
    if spec == "auto" and any(any(folder.glob(p)) for p in _STATE_PATTERNS):
        return  # continuing: the state's config names the data
    if spec == "auto" and not folder.exists():
        missing = f"the run folder {folder} does not exist{_near(folder)}"
        if given is not None and not {"config", "data_dir"} & given:
            raise CheckpointError(
                f"--checkpoint_path {folder} --resume_checkpoint auto: {missing}: there is no "
                "run to continue (to start a new run in it, also give --config or --data_dir)"
            )
        try:
            _check_data(config)
        except DataError as err:
            note = f" (--resume_checkpoint auto starts a new run: {missing})"
            raise DataError(err.path, err.line, err.field, err.problem + note) from None
        return
    _check_data(config)


def extend_hint(step: int) -> str:
    """How to train a run that is finished at ``step`` further."""
    return (
        f"to train it further, pass --learning_steps N with N greater than {step} (the learning "
        "rate decays to 0 at --learning_steps, so the schedule is stretched to N)"
    )


def _check_data(config: RunConfig) -> None:
    if not config.data.data_dir.strip():
        raise ConfigError(
            "--data_dir is empty: pass the folder holding train.jsonl, valid.jsonl and test.jsonl "
            "(e.g. --data_dir datasets/QQP), or a --config preset that names one"
        )
    for split in ("train", "valid"):
        split_file(config.data.data_dir, split)


def _near(folder: Path) -> str:
    """`` (did you mean A?)`` for folders of the same parent with a similar name."""
    parent = folder.parent
    if not parent.is_dir():
        return f" (nor does {parent})" if str(parent) not in ("", ".") else ""
    names = [p.name for p in parent.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(folder.name, names, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(str(parent / name) for name in close) + "?)"
