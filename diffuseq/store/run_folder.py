"""Create a training run folder; read one, ours or the original's, for decoding.

A run folder written by our trainer holds ``config.yaml`` (and ``training_args.json``); one
written by the original holds only ``training_args.json`` (docs/original.md §2.3, golden G9). Both hold
the saved tokenizer and ``ema_{rate}_{step:06d}.pt`` checkpoints.

Relative paths inside the config (``config_name``, ``vocab``, ``data_dir``) were relative to
the directory training ran in. The original always ran from its repository root, whose
``diffusion_models/<run>/`` is the run folder, so they are resolved against
``run_dir/../..`` first, then against the current directory (docs/original.md §2, "All scripts chdir to
the repository root").

Differences from the original: the tokenizer is read from the run folder (``vocab.json`` /
tokenizer files) instead of being rebuilt from a path that must still exist, and nothing is
written into the training folder (the original re-saves the tokenizer there, §10.1 item 17).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from diffuseq.config import RunConfig, write_json
from diffuseq.errors import CheckpointError, ConfigError, DataError
from diffuseq.store.safe_io import check_pattern

__all__ = [
    "RunFolder",
    "create_run_folder",
    "open_run",
    "refuse_existing_states",
    "resolve_model_dirs",
    "resolve_run_path",
    "trim_metrics",
]

CONFIG_YAML = "config.yaml"
TRAINING_ARGS = "training_args.json"
METRICS = "metrics.jsonl"


def resolve_run_path(value: str, run_dir: Path) -> str:
    """A relative path from the run's config, resolved as the original's working directory did.

    Absolute paths and values that exist nowhere (hub names such as ``bert-base-uncased``,
    the keywords ``bert``/``wordpiece``) are returned unchanged.
    """
    if not value or Path(value).is_absolute():
        return value
    # abspath: ``RUN/hf/..`` is ``RUN`` before its parents are taken (links are kept)
    for base in (Path(os.path.abspath(run_dir)).parent.parent, Path.cwd()):
        candidate = base / value
        if candidate.exists():
            return str(candidate)
    return value


def _read_config(run_dir: Path) -> RunConfig:
    if (run_dir / CONFIG_YAML).is_file():
        return RunConfig.load_yaml(run_dir / CONFIG_YAML)
    if (run_dir / TRAINING_ARGS).is_file():
        try:
            args = json.loads((run_dir / TRAINING_ARGS).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{run_dir / TRAINING_ARGS}: cannot read it as JSON ({err})"
            ) from None
        if not isinstance(args, dict):
            raise ConfigError(
                f"{run_dir / TRAINING_ARGS}: expected a JSON object of training arguments"
            )
        return RunConfig.from_training_args(args, source=str(run_dir / TRAINING_ARGS))
    raise CheckpointError(
        f"{run_dir} is not a training run folder: it has neither {CONFIG_YAML} nor {TRAINING_ARGS}. "
        "Pass --model_dir diffusion_models/<run folder> (a folder written by training)."
    )


@dataclass(frozen=True)
class RunFolder:
    """A training run folder with its config (paths resolved) and checkpoints.

    Attributes:
        path: the folder.
        config: the run's :class:`RunConfig`, with ``config_name``, ``vocab`` and ``data_dir``
            resolved (see the module docstring).
    """

    path: Path
    config: RunConfig

    @property
    def name(self) -> str:
        """The folder's own name, taken after resolving ``..`` and links (``RUN/hf/..`` is
        ``RUN``), so that it never leads an output path out of its parent."""
        return self.path.resolve().name

    def checkpoints(self, pattern: str = "ema") -> list[Path]:
        """``{pattern}*.pt`` files, newest first: the original's ``sorted(glob)[::-1]`` order
        (lexicographically last first, i.e. the highest zero-padded step)."""
        check_pattern(pattern)
        found = glob.glob(os.path.join(glob.escape(str(self.path)), f"{pattern}*.pt"))
        return [Path(p) for p in sorted(found, reverse=True) if Path(p).is_file()]

    def select_checkpoints(self, pattern: str, which: str) -> list[Path]:
        """All matching checkpoints (``which="all"``) or only the newest (``"latest"``).

        Raises:
            CheckpointError: nothing matches (the message lists the ``.pt`` files present).
        """
        found = self.checkpoints(pattern)
        if not found:
            present = sorted(p.name for p in self.path.glob("*.pt")) or ["no .pt files"]
            raise CheckpointError(
                f"no checkpoint in {self.path} matches --pattern {pattern!r} ({pattern}*.pt); "
                f"found: {', '.join(present)}. Pass another --pattern or train longer."
            )
        return found if which == "all" else found[:1]

    @cached_property
    def tokenizer(self):
        """The run's tokenizer, read from the files saved in the folder where possible."""
        from diffuseq.tokenizers.tokenizer import load_tokenizer_from_run

        return load_tokenizer_from_run(
            self.path, self.config.data.vocab, config_name=self.config.model.config_name
        )

    def split_path(self, split: str) -> Path:
        """The run's ``{data_dir}/{split}.jsonl`` (DataError if missing)."""
        from diffuseq.data.splits import split_file

        data_dir = self.config.data.data_dir
        if not data_dir or not Path(data_dir).is_dir():
            raise DataError(
                data_dir or "data_dir",
                None,
                None,
                f"the data folder of run {self.name} (data_dir in its config) was not found, so --split "
                f"{split} cannot be read; decode other inputs with --input FILE.jsonl or --text",
            )
        return split_file(data_dir, split)


def open_run(path: str | os.PathLike) -> RunFolder:
    """Open a run folder; relative config paths are resolved (see the module docstring).

    Raises:
        CheckpointError: the folder does not exist or holds no config.
        ConfigError: the config cannot be read.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    config = _read_config(run_dir)
    if (run_dir / CONFIG_YAML).is_file():
        _check_against_state(run_dir, config)
    m, d = config.model, config.data
    vocab = (
        d.vocab
        if d.vocab in ("bert", "wordpiece") or d.vocab.startswith("hf:")
        else resolve_run_path(d.vocab, run_dir)
    )
    config = config.replace("model", config_name=resolve_run_path(m.config_name, run_dir))
    config = config.replace("data", vocab=vocab, data_dir=resolve_run_path(d.data_dir, run_dir))
    return RunFolder(path=run_dir, config=config)


def _check_against_state(run_dir: Path, config: RunConfig) -> None:
    """Refuse a ``config.yaml`` edited in a model-defining field: compared with the config saved
    in the run's newest training state, where it has one that can be read (memory-mapped)."""
    from diffuseq.store.checkpoint import is_train_state, list_state_files, load_state_file
    from diffuseq.store.run_files import check_decode_config

    states = list_state_files(run_dir)
    if not states:
        return
    path = states[-1][1]
    try:
        state = load_state_file(path, mmap=True)
        saved = RunConfig.from_dict(state["config"], source=str(path))
    except (CheckpointError, ConfigError, KeyError, TypeError):
        return  # no usable state: decoding does not need one
    if is_train_state(state):
        check_decode_config(run_dir / CONFIG_YAML, config, saved, path)


def resolve_model_dirs(pattern: str) -> list[tuple[Path, Path | None]]:
    """``--model_dir`` glob → ``[(run folder, checkpoint file or None)]`` in sorted order.

    A match that is a ``.pt`` file selects that checkpoint of its parent run folder.

    Raises:
        CheckpointError: nothing matches.
    """
    if not pattern:
        raise CheckpointError(
            "--model_dir is required: pass diffusion_models/<run folder> (a glob is allowed)"
        )
    # an existing path is taken literally (run names may contain glob characters such as [ ])
    matches = [pattern] if Path(pattern).exists() else sorted(glob.glob(pattern))
    if not matches:
        raise CheckpointError(
            f"--model_dir {pattern!r} matches no folder; pass the run folder written by training "
            "(e.g. diffusion_models/diffuseq_qqp_h128_...)"
        )
    out: list[tuple[Path, Path | None]] = []
    for match in matches:
        p = Path(match)
        if p.is_file() and p.suffix == ".pt":
            out.append((p.parent, p))
        elif p.is_dir():
            out.append((p, None))
    if not out:
        raise CheckpointError(
            f"--model_dir {pattern!r} matches no run folder or .pt file: {', '.join(matches)}"
        )
    return out


# ---------------------------------------------------------------------------------- creating


def create_run_folder(
    run_dir: Path,
    config: RunConfig,
    training_args: Mapping[str, Any],
    tokenizer,
    *,
    resume,
    device: str,
):
    """Lock the run folder (before anything is written in it), check again under the lock that
    a new run finds no training states, then write the tokenizer, the config files and this
    launch's environment (:mod:`diffuseq.runtime.environment`). Call on rank 0.

    Args:
        tokenizer: the run's :class:`~diffuseq.tokenizers.tokenizer.TextTokenizer`.
        resume: the :class:`~diffuseq.store.checkpoint.ResumeSource` (``"state"``: the run continues).
        device: the training device, recorded in ``environment.json``.

    Returns:
        The held :class:`~diffuseq.store.safe_io.FolderLock`.
    """
    from diffuseq.runtime import dist
    from diffuseq.runtime.environment import record_environment
    from diffuseq.runtime.logger import get_logger
    from diffuseq.store.safe_io import FolderLock, remove_stale_temp_files

    lock = FolderLock(
        run_dir,
        what="training run",
        hint="choose another --checkpoint_path (one folder holds one run)",
    )
    try:
        if resume.kind != "state":
            refuse_existing_states(run_dir, config.train.resume_checkpoint)
        for path in remove_stale_temp_files(run_dir):
            get_logger("train").info("removed %s, left by a writer that was killed", path.name)
        if resume.kind == "state":
            dropped = trim_metrics(run_dir / METRICS, step=resume.step)
            if dropped:
                get_logger("train").info(
                    "%s: dropped %d record(s) written after step %d by the launch that was "
                    "stopped (this launch writes them again)",
                    METRICS,
                    dropped,
                    resume.step,
                )
        tokenizer.save(run_dir)
        config.save_yaml(run_dir / CONFIG_YAML)
        write_json(run_dir / TRAINING_ARGS, dict(training_args))
        record_environment(
            run_dir, start_step=resume.step, world_size=dist.world_size(), device=device
        )
    except BaseException:
        lock.release()
        raise
    return lock


def refuse_existing_states(run_dir: Path, resume_checkpoint: str) -> None:
    """ConfigError if a new run's folder already holds training states."""
    from diffuseq.store.checkpoint import list_state_files

    if list_state_files(run_dir):
        raise ConfigError(
            f"{run_dir} already holds training states (state_*.pt), but none is complete; remove "
            "them or choose another --checkpoint_path"
            if resume_checkpoint == "auto"
            else f"{run_dir} already holds training states (state_*.pt); pass --resume_checkpoint "
            "auto to continue that run, or choose another --checkpoint_path"
        )


def trim_metrics(path: Path, *, step: int) -> int:
    """Drop the ``metrics.jsonl`` records a stopped launch wrote after its last saved state, so
    that a resumed run keeps one record per step; rewritten atomically, the rest unchanged.

    A state of ``S`` updates covers the training and ``eval_*`` records of update indices
    ``< S`` (they count from 0, as the original) and the ``decode_*`` records of steps ``<= S``
    (they count completed updates); those are kept, with every line that is no JSON object with
    a numeric ``step``; an unfinished last line is dropped. (Not a line count saved with the
    state: the last, partial log interval is written after the final save.)

    Returns:
        The number of lines dropped.
    """
    if not path.is_file():
        return 0
    data = path.read_bytes()
    complete, _, partial = data.rpartition(b"\n")
    if not _:  # no newline at all: the whole file is one unfinished line
        complete, partial = b"", data
    rows = complete.split(b"\n") if complete else []
    kept = [row for row in rows if _logged_before(row, step)]
    dropped = len(rows) - len(kept) + (1 if partial.strip() else 0)
    if dropped:
        from diffuseq.store.safe_io import atomic_write

        atomic_write(path, lambda handle: handle.write(b"".join(r + b"\n" for r in kept)))
    return dropped


def _logged_before(row: bytes, step: int) -> bool:
    try:
        record = json.loads(row)
    except ValueError:
        return True
    if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
        return True
    after = "decode_bleu" in record  # eval-decode records count completed updates
    return record["step"] <= step if after else record["step"] < step
