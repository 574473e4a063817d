"""Training from Python: :func:`train` a run config, :func:`prepare` a trainer, :func:`check` one.

What ``run_train.py`` does, without a command line (the command line parses its flags into a
:class:`~diffuseq.config.RunConfig` and calls :func:`train`)::

    from diffuseq import RunConfig, train

    config = RunConfig.from_dict({"data_dir": "datasets/demo", "vocab": "datasets/demo/vocab.txt",
                                  "learning_steps": 100, "checkpoint_path": "runs/demo"})
    result = train(config, device="cpu")
    result.ema_files  # (Path("runs/demo/ema_0.9999_000100.pt"),)

Continue a run exactly where it stopped: the same config with ``resume_checkpoint="auto"`` (and
the run folder as ``checkpoint_path``), or ``RunConfig.load_yaml(run / "config.yaml")`` with
``resume_checkpoint`` set; a model, diffusion or tokenization value that differs from the
training state's is refused. Under ``torchrun`` every process calls :func:`train` with the same
config (the process group is joined and left inside).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diffuseq.config import RunConfig
from diffuseq.config.runtime import RuntimeOptions
from diffuseq.data.splits import split_file
from diffuseq.errors import UserError
from diffuseq.runtime import dist
from diffuseq.runtime.logger import get_logger, setup_logging
from diffuseq.store.checkpoint import ema_file_name
from diffuseq.store.hf_folder import export_checkpoint
from diffuseq.training.preflight import extend_hint, given_keys, preflight
from diffuseq.training.setup import Layers, build_trainer, resolve, torch_device
from diffuseq.training.trainer import Trainer

__all__ = ["TrainResult", "check", "prepare", "train"]


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """Where a finished (or stopped) training run ended.

    Attributes:
        run_dir: the run folder.
        step: the optimizer step reached (the last checkpoint's).
        stopped_early: the ``max_minutes`` budget ran out before ``learning_steps``.
        ema_files: the EMA checkpoints of ``step``, one per EMA rate (what decoding reads).
        model_dir: the Hugging Face model folder written from the newest EMA checkpoint
            (``None``: not asked for, stopped early, its export failed, or not rank 0).
        rank: this process's rank (0 without torchrun; only rank 0 writes files).
    """

    run_dir: Path
    step: int
    stopped_early: bool
    ema_files: tuple[Path, ...]
    model_dir: Path | None = None
    rank: int = 0


def train(
    config: RunConfig,
    *,
    device: str = "auto",
    max_minutes: float | None = None,
    keep_states: int = 2,
    progress: bool = True,
    export_model: bool = True,
    layers: Layers = (),
) -> TrainResult:
    """Train ``config`` to ``config.train.learning_steps`` (or until ``max_minutes``), saving
    checkpoints in the run folder; see :class:`~diffuseq.config.runtime.RuntimeOptions` for
    the keyword arguments (``max_minutes=None``: no budget; ``keep_states=0``: keep all).

    ``layers``: the ``(mapping, source)`` pairs ``config`` was merged from over the defaults
    (``RunConfig.from_layers``), for a run that continues from its training state: the state's
    config then replaces the defaults under them, as ``run_train.py --resume_checkpoint``
    does with its preset and flags. Left empty, ``config`` is the run's whole config.

    Raises:
        UserError: a bad config, data file or resume source (before anything is written).
    """
    options = _options(device, max_minutes, keep_states, progress, export_model)
    _preflight(config, layers)
    trainer = build_trainer(config.validate(), options, layers)
    try:
        finished = trainer.step >= trainer.config.learning_steps  # said by the set-up
        step = trainer.step if finished else trainer.fit()
        result = TrainResult(
            run_dir=trainer.run_dir,
            step=step,
            stopped_early=trainer.stopped_early,
            ema_files=tuple(trainer.run_dir / ema_file_name(rate, step) for rate in trainer.ema),
            rank=trainer.rank,
        )
        if trainer.is_main and options.export_model and not trainer.stopped_early:
            result = _with_model_folder(result)
    finally:
        trainer.close()
        dist.cleanup()
        setup_logging(is_main=trainer.is_main)  # log to the console only: the run's log.txt is done
    return result


def prepare(
    config: RunConfig,
    *,
    device: str = "auto",
    max_minutes: float | None = None,
    keep_states: int = 2,
    progress: bool = True,
    layers: Layers = (),
) -> Trainer:
    """The ready-to-fit :class:`~diffuseq.training.trainer.Trainer` that :func:`train` runs
    (run folder created, resume loaded). The caller runs ``trainer.fit()`` and then
    ``trainer.close()`` (releases the run folder's lock) and ``diffuseq.runtime.dist.cleanup()``."""
    options = _options(device, max_minutes, keep_states, progress, export_model=False)
    _preflight(config, layers)
    return build_trainer(config.validate(), options, layers)


def check(config: RunConfig, *, device: str = "auto", layers: Layers = ()) -> str:
    """Everything checked before a run starts, in this process only (no process group, nothing
    written): the config, the resume source, the data files.

    Returns:
        What a run would do: ``"new run; data D"`` or ``"continues S (step N); data D"``.
    """
    _preflight(config, layers)
    choice = torch_device(_options(device).device)
    where = torch.device(choice or ("cuda" if torch.cuda.is_available() else "cpu"))
    config, resume = resolve(config.validate(), layers, where)
    for split in ("train", "valid"):
        split_file(config.data.data_dir, split)
    what = f"continues {resume.path} (step {resume.step})" if resume.kind != "none" else "new run"
    if resume.kind == "state" and resume.step >= config.train.learning_steps:
        what += f", which is finished: {extend_hint(resume.step)}"
    return f"{what}; data {config.data.data_dir}"


def _preflight(config: RunConfig, layers: Layers) -> None:
    """:func:`~diffuseq.training.preflight.preflight` (the paths, before any heavy work)."""
    preflight(config, given=given_keys(layers) if layers else None)


def _options(
    device: str,
    max_minutes: float | None = None,
    keep_states: int = 2,
    progress: bool = True,
    export_model: bool = True,
) -> RuntimeOptions:
    return RuntimeOptions(
        device=device,
        max_minutes=max_minutes or 0.0,
        keep_states=keep_states,
        progress=progress,
        export_model=export_model,
    ).validate()


def _with_model_folder(result: TrainResult) -> TrainResult:
    """The model folder of the newest EMA checkpoint (a failure is a warning: training is done)."""
    try:
        folder = export_checkpoint(result.run_dir, replace=True)
    except (UserError, OSError) as err:
        get_logger("train").warning("no model folder written (%s); run diffuseq-export", err)
        return result
    return replace(result, model_dir=folder)
