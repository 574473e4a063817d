r"""Train a DiffuSeq model.

Single process (CPU or one GPU):
    python run_train.py --config configs/demo.yaml
Several GPUs (or CPU processes, gloo) on one machine:
    torchrun --standalone --nproc_per_node 4 run_train.py --config configs/qqp.yaml \
        --data_dir datasets/QQP
Continue a run exactly where it stopped:
    python run_train.py --config configs/demo.yaml --checkpoint_path diffusion_models/RUN \
        --resume_checkpoint auto

Reimplements the original's `scripts/run_train.py` + `train.py` (docs/original.md §2.2, §2.3) with the same
flag names, meanings and defaults; flags override a ``--config`` YAML preset. The run folder
(``diffusion_models/<name>`` of the current directory unless ``--checkpoint_path``) is named by
rank 0 and broadcast (the original named it on every rank, a race). It receives
``training_args.json`` (the original's keys), ``config.yaml``, the tokenizer, ``log.txt``,
``environment.json`` (library versions, git commit and devices of every launch),
``metrics.jsonl``, ``ema_{rate}_{step:06d}.pt`` files in the original format and full training
states ``state_{step:06d}.pt`` with a ``latest.json`` pointer.

Random seeds: every rank seeds Python, numpy and torch with ``--seed + rank`` (different noise,
dropout and timestep draws per GPU; rank 0 of a single-process run uses ``--seed`` itself);
``--same_seed_all_ranks`` gives every rank ``--seed`` as the original did. The model is
initialised on rank 0's stream (DDP broadcasts rank 0's weights).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from diffuseq.cli.common import describe, program_name, run_cli
from diffuseq.cli.flags import build_parser as build_flag_parser
from diffuseq.cli.flags import config_from_args, given_flags
from diffuseq.config import SECTIONS, RunConfig, opt, read_yaml
from diffuseq.errors import ConfigError

if TYPE_CHECKING:  # the set-up (torch, transformers) is imported only when a run starts
    from diffuseq.training.trainer import Trainer

PROG = program_name("run_train.py", "diffuseq.cli.train", "diffuseq-train")


@dataclass(frozen=True)
class RuntimeOptions:
    """How this invocation runs; not part of the run's configuration."""

    config: str = opt(
        "", "YAML preset (e.g. configs/qqp.yaml); flags given on the command line override it"
    )
    device: str = opt(
        "auto",
        "where to train: auto (CUDA if available), cpu or cuda",
        choices=("auto", "cpu", "cuda"),
    )
    max_minutes: float = opt(
        0.0,
        "wall-clock budget in minutes: when spent, save a checkpoint and stop cleanly "
        "(0 = no budget)",
    )
    keep_states: int = opt(
        2,
        "how many full training states (state_*.pt) to keep; 0 keeps all; EMA files are "
        "never deleted",
    )
    progress: bool = opt(True, "show a progress bar on rank 0")
    export_model: bool = opt(
        True,
        "when training finishes, write the newest EMA checkpoint as a Hugging Face model folder "
        "RUN/hf/<checkpoint>/ (model.safetensors, config.json, tokenizer, model card)",
    )
    check_args: bool = opt(
        False,
        "only check the flags, the preset, the data folder and what --resume_checkpoint "
        "continues, then exit (0: a run would start); scripts/train.sh does this once before "
        "starting several processes",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the run configuration (generated from diffuseq.config) plus the runtime options."""
    return build_flag_parser(
        PROG,
        describe(__doc__, "run_train.py", PROG),
        [(RuntimeOptions, "runtime"), *((kind, name) for name, kind in SECTIONS.items())],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_train.py``; user errors print one paragraph and return 2."""
    return run_cli(_main, argv, PROG)


def _main(argv: Sequence[str] | None) -> int:
    invocation = parse_invocation(argv)  # --help and flag errors end here, before torch loads
    from diffuseq.cli.train_setup import check, run

    return check(invocation) if invocation.options.check_args else run(invocation)


def prepare(argv: Sequence[str] | Invocation | None) -> Trainer:
    """Parse ``argv``, join the process group and build a ready-to-fit :class:`Trainer`
    (:func:`diffuseq.cli.train_setup.prepare`)."""
    from diffuseq.cli.train_setup import prepare as prepare_trainer

    return prepare_trainer(argv if isinstance(argv, Invocation) else parse_invocation(argv))


# ---------------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: the run config, the runtime options and the layers it came from."""

    options: RuntimeOptions
    preset: Mapping[str, Any]
    flags: Mapping[str, Any]

    @cached_property
    def config(self) -> RunConfig:
        """The validated run config: defaults < ``--config`` preset < flags."""
        return self.merged()

    def merged(self, saved: tuple[Mapping[str, Any], str] | None = None) -> RunConfig:
        """Defaults < ``saved`` (a continued run's config) < ``--config`` preset < flags."""
        layers = [saved] if saved else []
        layers += [(self.preset, self.options.config), (self.flags, "the command line")]
        return RunConfig.from_layers(*layers).validate()


def parse_invocation(argv: Sequence[str] | None) -> Invocation:
    """Parse and validate ``argv``: defaults < ``--config`` YAML < flags on the command line."""
    args = build_parser().parse_args(argv)
    options = config_from_args(args, RuntimeOptions)
    invocation = Invocation(
        options=options,
        preset=read_yaml(options.config) if options.config else {},
        flags={k: v for kind in SECTIONS.values() for k, v in given_flags(args, kind).items()},
    )
    if options.keep_states < 0:
        raise ConfigError(
            f"--keep_states must be 0 (keep all) or positive, got {options.keep_states}"
        )
    if options.max_minutes < 0:
        raise ConfigError(
            f"--max_minutes must be 0 (no budget) or positive, got {options.max_minutes}"
        )
    _ = invocation.config  # merge and validate now, before any work
    return invocation


if __name__ == "__main__":
    raise SystemExit(main())
