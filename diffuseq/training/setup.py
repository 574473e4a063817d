"""Set-up of a training run (behind :mod:`diffuseq.training.api` and the ``run_train.py``
command line): check the resume source and the data, join the process group, build the data,
the family's model, process and objective, and the :class:`~diffuseq.training.trainer.Trainer`.

A run's config arrives as a validated :class:`~diffuseq.config.RunConfig` plus, optionally, the
*layers* it was merged from (``(mapping, source)`` pairs over the defaults: the command line's
``--config`` preset and flags). They matter only when a run continues from its training state:
the state's saved config then takes the place of the defaults under them (:func:`resolve`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diffuseq.config import RunConfig, run_folder_name
from diffuseq.config.run import STAMP_FORMATS, run_notes
from diffuseq.config.runtime import RuntimeOptions
from diffuseq.data.cache import load_split
from diffuseq.data.dataset import InfiniteBatches, infinite_batches, make_loader
from diffuseq.data.splits import split_file
from diffuseq.errors import CheckpointError, ConfigError, UserError
from diffuseq.families import get_family
from diffuseq.models.factory import check_sequence_length
from diffuseq.runtime import dist
from diffuseq.runtime.logger import (
    MetricsWriter,
    get_logger,
    open_trackers,
    require_trackers,
    setup_logging,
)
from diffuseq.store.checkpoint import (
    ResumeSource,
    ema_file_name,
    load_state_file,
    resolve_resume,
    seed_everything,
)
from diffuseq.store.run_files import check_resume_files
from diffuseq.store.run_folder import create_run_folder, refuse_existing_states
from diffuseq.store.safe_io import contained
from diffuseq.tokenizers.tokenizer import (
    TextTokenizer,
    UnknownTokens,
    load_tokenizer,
    load_tokenizer_from_run,
)
from diffuseq.training.eval_decode import build_eval_decode
from diffuseq.training.preflight import extend_hint
from diffuseq.training.trainer import Trainer, autocast_dtype

__all__ = ["Layers", "build_trainer", "resolve", "torch_device"]

#: ``(mapping, source)`` pairs a run config was merged from (:meth:`RunConfig.from_layers`).
Layers = Sequence[tuple[Mapping[str, Any], str]]

RUNS_ROOT = Path("diffusion_models")


def build_trainer(config: RunConfig, options: RuntimeOptions, layers: Layers = ()) -> Trainer:
    """Join the process group (when launched by torchrun) and build a ready-to-fit
    :class:`Trainer`; on failure the process group is left again."""
    info, device = dist.init(device=torch_device(options.device))
    try:
        return _build(config, options, layers, info.rank, device)
    except BaseException:
        dist.cleanup()
        raise


def torch_device(choice: str) -> str | None:
    """``--device``: ``"cpu"``, ``"cuda"`` or ``None`` (auto: CUDA if available)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu (or auto)")
    return None if choice == "auto" else choice


def _build(
    config: RunConfig, options: RuntimeOptions, layers: Layers, rank: int, device: torch.device
) -> Trainer:
    config, resume = resolve(config, layers, device)
    tr = config.train
    seed_everything(tr.seed + (0 if tr.same_seed_all_ranks else rank))
    setup_logging(is_main=rank == 0)
    run_dir, notes = _run_dir(config, resume)
    if resume.kind == "state":  # before anything is read or written: edited run files
        _check_run_files(run_dir, config, resume, notes)
    # Read everything the user supplied before creating anything on disk.
    tokenizer, train_batches, valid_batches = _load_data(config, resume, run_dir, rank)
    config = config.replace("model", vocab_size=tokenizer.vocab_size)
    training_args = {**config.to_training_args(), "notes": notes, "checkpoint_path": str(run_dir)}
    run_lock = on_rank0_or_raise(
        lambda: create_run_folder(
            run_dir, config, training_args, tokenizer, resume=resume, device=str(device)
        )
    )
    setup_logging(is_main=rank == 0, log_file=run_dir / "log.txt")
    trackers = on_rank0_or_raise(
        lambda: open_trackers(
            wandb=tr.log_wandb,
            tensorboard=tr.tensorboard,
            run_name=str(run_dir),
            run_dir=run_dir,
            config=training_args,
            resume_step=resume.step if resume.kind == "state" else None,
        )
    )
    log = get_logger("train")
    log.info("run folder %s (%d process(es), device %s)", run_dir, dist.world_size(), device)
    log.info("### Creating model and diffusion...")
    family = get_family(config.model.family)
    model = family.build_model(config, tokenizer=tokenizer).to(device)
    log.info("### The parameter count is %d", sum(p.numel() for p in model.parameters()))
    process = family.build_process(config)
    writer = MetricsWriter(
        path=run_dir / "metrics.jsonl" if rank == 0 else None,
        enabled=rank == 0,
        trackers=trackers or (),
    )
    eval_decode = build_eval_decode(
        config, model=model, process=process, tokenizer=tokenizer,
        valid_path=split_file(config.data.data_dir, "valid"), device=device, writer=writer,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        objective=family.build_objective(config, process),
        train_batches=train_batches,
        valid_batches=valid_batches,
        config=tr,
        run_dir=run_dir,
        device=device,
        writer=writer,
        run_info={"config": config.to_dict(), "training_args": training_args},
        max_minutes=options.max_minutes or None,
        keep_states=options.keep_states,
        progress=options.progress,
        run_lock=run_lock,
        eval_decode=eval_decode,
    )
    _load_resume(trainer, resume, tr.ema_rates)
    family.sync_process(process, model)  # e.g. the refitted schedule of the loaded weights
    if trainer.step >= tr.learning_steps:
        log.warning(
            "nothing to train: %s is finished (step %d of --learning_steps %d); %s",
            run_dir, trainer.step, tr.learning_steps, extend_hint(trainer.step),
        )  # fmt: skip
    else:
        log.info("### Training from step %d to %d...", trainer.step, tr.learning_steps)
    return trainer


def resolve(
    config: RunConfig, layers: Layers, device: torch.device
) -> tuple[RunConfig, ResumeSource]:
    """The run's config and what it continues (``resume_checkpoint``); rejects what cannot run
    on ``device``. Continuing from a training state, the config is :func:`_config_for_resume`'s."""
    autocast_dtype(config.train, device)  # fp16 on CPU: fail before any work
    check_sequence_length(config.model, config.data.seq_len)
    require_trackers(wandb=config.train.log_wandb, tensorboard=config.train.tensorboard)
    resume = resolve_resume(
        config.train.resume_checkpoint, checkpoint_path=config.train.checkpoint_path
    )
    if resume.kind == "state":
        config = _config_for_resume(resume, config, layers)
    _check_steps_left(config.train.learning_steps, resume)
    return config, resume


def _check_steps_left(learning_steps: int, resume: ResumeSource) -> None:
    """A continued run may not be asked for fewer updates than it holds (an error saying how
    to extend it). Exactly as many is a finished run continued again (a rerun script, a
    requeued job): :func:`build_trainer` says so and nothing is trained (exit 0)."""
    if resume.kind != "none" and resume.step > learning_steps:
        raise ConfigError(
            f"--learning_steps {learning_steps}: {resume.path} already holds {resume.step} "
            f"updates, so there is nothing to train. To extend the run, continue it with a "
            f"larger --learning_steps (e.g. --learning_steps {2 * resume.step}); the learning "
            "rate then follows the new schedule (--lr decays linearly to 0 at --learning_steps)"
        )


def _load_data(
    config: RunConfig, resume: ResumeSource, run_dir: Path, rank: int
) -> tuple[TextTokenizer, InfiniteBatches, InfiniteBatches | None]:
    """The tokenizer (the run's own when continuing it) and the batch iterators; every rank
    reads both splits (a bad file fails everywhere), validation batches are drawn on rank 0."""
    da, tr = config.data, config.train
    train_path, valid_path = split_file(da.data_dir, "train"), split_file(da.data_dir, "valid")
    if resume.kind == "state":
        tokenizer = load_tokenizer_from_run(run_dir, da.vocab, config_name=config.model.config_name)
        if tokenizer.vocab_size != config.model.vocab_size:
            raise CheckpointError(
                f"{resume.path}: trained with a vocabulary of {config.model.vocab_size} tokens, "
                f"but the tokenizer now has {tokenizer.vocab_size}"
            )
    else:
        tokenizer = load_tokenizer(
            da.vocab,
            config_name=config.model.config_name,
            train_files=[train_path],
            wordpiece_vocab_size=da.wordpiece_vocab_size,
        )
    get_logger("train").info("### Creating data loader... (vocab size %d)", tokenizer.vocab_size)
    unknown = UnknownTokens(tokenizer)
    cache = dict(seq_len=da.seq_len, cache=da.data_cache)
    train_set = load_split(train_path, tokenizer, unknown=unknown, **cache)
    valid_set = load_split(valid_path, tokenizer, **cache)
    if rank == 0:
        unknown.report(get_logger("train"), f"training data {train_path}")
    train_batches = infinite_batches(
        make_loader(
            train_set,
            batch_size=tr.batch_size,
            shuffle=True,
            seed=tr.seed,
            rank=rank,
            world_size=dist.world_size(),
            num_workers=da.num_workers,
        ),
        fixed_order=tr.fixed_data_order,
    )
    valid_batches = None
    if rank == 0:
        valid_batches = infinite_batches(
            make_loader(
                valid_set,
                batch_size=tr.batch_size,
                shuffle=True,
                seed=tr.seed,
                num_workers=da.num_workers,
            )
        )
    return tokenizer, train_batches, valid_batches


# Values that must not change when a run continues from its training state.
_FIXED_DATA = ("seq_len", "vocab")


def _config_for_resume(resume: ResumeSource, config: RunConfig, layers: Layers) -> RunConfig:
    """The config of a run continuing from its training state: the state's config overridden by
    ``layers`` (the command line: its ``--config`` preset, then its flags). Without layers (a
    config built in Python) ``config`` itself, with the vocabulary size of the state.

    Raises:
        ConfigError: a model, diffusion or tokenization value differs from the state's.
    """
    saved = RunConfig.from_dict(resume.payload["config"], source=str(resume.path))
    if layers:
        config = RunConfig.from_layers((saved.to_dict(), str(resume.path)), *layers).validate()
    else:
        config = config.replace("model", vocab_size=saved.model.vocab_size)
    diffs = [
        f"{field}: {old!r} in the state, {new!r} now"
        for section in ("model", "diffusion")
        for field, old in saved.to_dict()[section].items()
        if field != "vocab_size" and (new := getattr(getattr(config, section), field)) != old
    ] + [
        f"{field}: {getattr(saved.data, field)!r} in the state, {getattr(config.data, field)!r} now"
        for field in _FIXED_DATA
        if getattr(saved.data, field) != getattr(config.data, field)
    ]
    if diffs:
        raise ConfigError(
            f"cannot continue {resume.path} with a different model, diffusion or tokenization ("
            + "; ".join(diffs)
            + "); leave these flags out to use the saved values (from Python: start from the "
            "run's config.yaml), or start a new run"
        )
    return config


def _check_run_files(run_dir: Path, config: RunConfig, resume: ResumeSource, notes: str) -> None:
    """Refuse or report hand edits of ``config.yaml``/``training_args.json`` (see
    :mod:`diffuseq.store.run_files`); warnings on rank 0."""
    training_args = {**config.to_training_args(), "notes": notes, "checkpoint_path": str(run_dir)}
    warnings = check_resume_files(
        run_dir,
        state=resume.path,
        saved=RunConfig.from_dict(resume.payload["config"], source=str(resume.path)),
        saved_args=resume.payload.get("training_args") or {},
        config=config,
        training_args=training_args,
    )
    if dist.is_main():
        for warning in warnings:
            get_logger("train").warning("%s", warning)


def _run_dir(config: RunConfig, resume: ResumeSource) -> tuple[Path, str]:
    """The run folder and the notes written to training_args.json (:func:`run_notes`: notes and
    timestamp, as the original), decided by rank 0 and broadcast (the original computed them on every rank)."""
    tr = config.train
    if resume.kind == "state":
        if tr.checkpoint_path and Path(tr.checkpoint_path).resolve() != resume.run_dir.resolve():
            get_logger("train").warning(
                "continuing in %s, the folder of the training state (not --checkpoint_path %s)",
                resume.run_dir, tr.checkpoint_path,
            )  # fmt: skip
        saved = resume.payload.get("training_args") or {}
        return resume.run_dir, str(saved.get("notes", tr.notes))
    proposal = None
    if dist.is_main():
        stamp = time.strftime(STAMP_FORMATS[tr.run_name_format])
        folder = tr.checkpoint_path or str(
            contained(RUNS_ROOT, run_folder_name(config, timestamp=stamp), "the run folder")
        )
        proposal = (folder, run_notes(tr, timestamp=stamp))
    folder, notes = dist.broadcast_object(proposal)
    run_dir = Path(folder)
    refuse_existing_states(run_dir, tr.resume_checkpoint)  # early; again under the lock
    return run_dir, notes


def _load_resume(trainer: Trainer, resume: ResumeSource, rates: tuple[float, ...]) -> None:
    log = get_logger("train")
    if resume.kind == "state":
        how = "exactly" if trainer.load_state(resume.payload) else "(not bit-identically)"
        log.info("resumed %s from %s (step %d)", how, resume.path, resume.step)
    elif resume.kind == "weights":
        ema_weights = {}
        for rate in rates:  # the original also loads the sibling EMA files of the same step
            sibling = resume.path.parent / ema_file_name(rate, resume.step)
            if sibling.resolve() == resume.path.resolve():
                ema_weights[rate] = resume.payload
            elif sibling.is_file():
                ema_weights[rate] = load_state_file(sibling)
        trainer.load_weights(resume.payload, step=resume.step, ema_weights=ema_weights)
        log.info(
            "loaded weights from %s; counting steps from %d with a fresh optimizer",
            resume.path,
            resume.step,
        )
    resume.payload = None  # free the loaded tensors


def on_rank0_or_raise(action: Callable[[], Any]) -> Any:
    """Run ``action`` on rank 0 and tell every rank whether it failed, so that a failure (a
    folder that cannot be created, a missing package) stops all ranks instead of leaving the
    others waiting. Returns the result on rank 0, ``None`` elsewhere."""
    result, failure = None, None
    if dist.is_main():
        try:
            result = action()
        except UserError as err:
            failure = err
        except OSError as err:
            failure = ConfigError(f"cannot write the run folder: {err}")
    message = dist.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise UserError(f"rank 0 failed: {message}")
    return result
