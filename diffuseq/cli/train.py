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
flag names, meanings and defaults; flags override a ``--config`` YAML preset. The run itself is
diffuseq.training.train (the Python API) given the parsed config and runtime options. The run
folder (``diffusion_models/<name>`` of the current directory unless ``--checkpoint_path``) is
named by rank 0 and broadcast (the original named it on every rank, a race). It receives
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
from diffuseq.config.runtime import RuntimeOptions

if TYPE_CHECKING:  # the set-up (torch, transformers) is imported only when a run starts
    from diffuseq.training.trainer import Trainer

__all__ = ["Invocation", "RuntimeOptions", "build_parser", "main", "parse_invocation", "prepare"]

PROG = program_name("run_train.py", "diffuseq.cli.train", "diffuseq-train")


@dataclass(frozen=True)
class PresetOption:
    """The command line's preset file (the first runtime flag)."""

    config: str = opt(
        "", "YAML preset (e.g. configs/qqp.yaml); flags given on the command line override it"
    )


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the run configuration (generated from diffuseq.config) plus the runtime options."""
    return build_flag_parser(
        PROG,
        describe(__doc__, "run_train.py", PROG),
        [
            (PresetOption, "runtime"),
            (RuntimeOptions, "runtime"),
            *((kind, name) for name, kind in SECTIONS.items()),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_train.py``; user errors print one paragraph and return 2."""
    return run_cli(_main, argv, PROG)


def _main(argv: Sequence[str] | None) -> int:
    invocation = parse_invocation(argv)  # --help and flag errors end here, before torch loads
    options, config, layers = invocation.options, invocation.config, invocation.layers
    from diffuseq.training.preflight import given_keys, preflight

    preflight(config, given=given_keys(layers) | ({"config"} if invocation.preset_file else set()))
    from diffuseq.training import api  # torch, transformers: after the paths are checked

    if options.check_args:
        print(f"{PROG}: arguments OK ({api.check(config, device=options.device, layers=layers)})")
        return 0
    result = api.train(
        config,
        device=options.device,
        max_minutes=options.max_minutes,
        keep_states=options.keep_states,
        progress=options.progress,
        export_model=options.export_model,
        layers=layers,
    )
    if result.rank == 0:
        emas = ", ".join(path.name for path in result.ema_files)
        status = "stopped early (--max_minutes) at" if result.stopped_early else "finished at"
        print(f"{PROG}: {status} step {result.step}; run folder {result.run_dir} ({emas})")
        if result.model_dir is not None:
            print(f"{PROG}: model folder {result.model_dir}")
    return 0


def prepare(argv: Sequence[str] | Invocation | None) -> Trainer:
    """Parse ``argv``, join the process group and build a ready-to-fit :class:`Trainer`
    (:func:`diffuseq.training.api.prepare`)."""
    from diffuseq.training import api

    invocation = argv if isinstance(argv, Invocation) else parse_invocation(argv)
    options = invocation.options
    return api.prepare(
        invocation.config,
        device=options.device,
        max_minutes=options.max_minutes,
        keep_states=options.keep_states,
        progress=options.progress,
        layers=invocation.layers,
    )


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: the runtime options and the layers of the run config (the
    ``--config`` preset, then the flags given)."""

    options: RuntimeOptions
    preset: Mapping[str, Any]
    flags: Mapping[str, Any]
    preset_file: str = ""

    @property
    def layers(self) -> tuple[tuple[Mapping[str, Any], str], ...]:
        """``(mapping, source)`` over the defaults (or over a continued run's saved config)."""
        return ((self.preset, self.preset_file), (self.flags, "the command line"))

    @cached_property
    def config(self) -> RunConfig:
        """The validated run config: defaults < ``--config`` preset < flags."""
        return self.merged()

    def merged(self, saved: tuple[Mapping[str, Any], str] | None = None) -> RunConfig:
        """Defaults < ``saved`` (a continued run's config) < ``--config`` preset < flags."""
        return RunConfig.from_layers(*([saved] if saved else []), *self.layers).validate()


def parse_invocation(argv: Sequence[str] | None) -> Invocation:
    """Parse and validate ``argv``: defaults < ``--config`` YAML < flags on the command line."""
    args = build_parser().parse_args(argv)
    preset_file = config_from_args(args, PresetOption).config
    invocation = Invocation(
        options=config_from_args(args, RuntimeOptions).validate(),
        preset=read_yaml(preset_file) if preset_file else {},
        flags={k: v for kind in SECTIONS.values() for k, v in given_flags(args, kind).items()},
        preset_file=preset_file,
    )
    _ = invocation.config  # merge and validate now, before any work
    return invocation


if __name__ == "__main__":
    raise SystemExit(main())
