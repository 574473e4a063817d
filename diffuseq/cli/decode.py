"""Decode with a trained DiffuSeq model, like the original ``scripts/run_decode.py`` (docs/original.md §2.4–2.6).

Examples::

    python run_decode.py --model_dir diffusion_models/<run> --seed 123 --split test
    python run_decode.py --model_dir diffusion_models/<run> --num_samples 10     # seeds 101..110, one pass
    python run_decode.py --model_dir diffusion_models/<run> --sampler dpm-solver++ --step 10
    python run_decode.py --model_dir diffusion_models/<run> --text "how old are you ?"
    torchrun --nproc_per_node 4 run_decode.py --model_dir diffusion_models/<run>   # inputs sharded

Output: ``<out_dir>/<run>/<ckpt>.samples/seed{S}_step{clamp}.json`` for full-step ancestral
sampling (the original's layout), ``<ckpt>.samples-<sampler>-<N>steps/…`` otherwise; one JSON
line ``{"recover", "reference", "source"}`` per input, in input order. A re-run overwrites
(``--append`` appends, as the original). Each file is renamed into place only when complete, and
the folder's ``MANIFEST`` (line counts, settings, special tokens) is what ``eval_seq2seq.py``
checks the files against. Only the newest matching checkpoint is decoded
(``--checkpoint all`` decodes every one, newest first, as the original).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from diffuseq.cli.common import describe, program_name, run_cli
from diffuseq.cli.flags import build_parser as build_flag_parser
from diffuseq.cli.flags import config_from_args
from diffuseq.config import DecodeConfig, DecodeJob, ResolvedDecode
from diffuseq.errors import ConfigError
from diffuseq.sampling.table import SAMPLER_TABLE

PROG = program_name("run_decode.py", "diffuseq.cli.decode", "diffuseq-decode")


def build_parser() -> argparse.ArgumentParser:
    """The flags of :class:`DecodeJob` and :class:`DecodeConfig` (diffuseq.config.decode)."""
    return build_flag_parser(
        PROG,
        describe(__doc__, "run_decode.py", PROG),
        [(DecodeJob, "checkpoints"), (DecodeConfig, "sampling")],
    )


def parse_args(argv: Sequence[str] | None) -> tuple[DecodeJob, DecodeConfig]:
    """The validated job and sampling configs of a command line."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args, DecodeConfig).validate()
    return config_from_args(args, DecodeJob).validate(), config


def top_p_warning(resolved: ResolvedDecode) -> str | None:
    """The warning for a ``--top_p`` the resolved sampler ignores (its row draws no noise)."""
    if resolved.noise_top_p is None or resolved.row.draws_noise:
        return None
    noisy = ", ".join(row.name for row in SAMPLER_TABLE.values() if row.draws_noise)
    return (
        f"--top_p only affects the samplers that draw noise ({noisy}); "
        f"{resolved.sampler} draws none"
    )


def input_pairs(job: DecodeJob, run) -> tuple[list[tuple[str, str]], str]:
    """The pairs to decode and their output-folder label ('' for the test split)."""
    from diffuseq.data.dataset import read_pairs
    from diffuseq.decoding.text import read_input_file

    if job.text:
        return [(text.strip(), "") for text in job.text], "text"
    if job.input:
        return read_input_file(job.input), f"input-{Path(job.input).stem}"
    return read_pairs(run.split_path(job.split)), "" if job.split == "test" else job.split


def print_candidates(paths: Sequence[Path], special_tokens: dict[str, str] | None = None) -> None:
    """Print each source and its candidates (one per seed file) on stdout (``--text``), cut at
    the first separator and without the tokenizer's ``special_tokens`` (the files keep them)."""
    import json

    from diffuseq.decoding.text import cut_at_sep

    def shown(text: str) -> str:
        return cut_at_sep(text, special_tokens) if special_tokens else text

    files = [
        [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for p in paths
    ]
    for i, first in enumerate(files[0]):
        print(f"source: {shown(first['source'])}")
        for path, records in zip(paths, files):
            print(f"  {path.stem.split('_')[0]}: {shown(records[i]['recover'])}")
    sys.stdout.flush()


def _main(argv: Sequence[str] | None) -> int:
    job, settings = parse_args(argv)  # --help and flag errors end here, before torch loads
    import torch

    from diffuseq.decoding.job import Decoder, decode_to_files, samples_dir_name
    from diffuseq.runtime import dist
    from diffuseq.runtime.logger import get_logger, setup_logging
    from diffuseq.store.hf_folder import ModelFolder, is_model_folder, read_model_folder
    from diffuseq.store.run_folder import open_run, resolve_model_dirs
    from diffuseq.store.safe_io import contained

    targets = resolve_model_dirs(job.model_dir)
    runs = [
        (read_model_folder(path) if is_model_folder(path) else open_run(path), ckpt)
        for path, ckpt in targets
    ]
    jobs = [
        (run, [ckpt] if ckpt else run.select_checkpoints(job.pattern, job.checkpoint))
        for run, ckpt in runs
    ]
    if job.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available here; use --device cpu (or auto)"
        )
    info, device = dist.init(device=None if job.device == "auto" else job.device)
    setup_logging(is_main=info.is_main)
    log = get_logger("decode")
    for run, checkpoints in jobs:
        pairs, label = input_pairs(job, run)
        for checkpoint in checkpoints:
            decoder = (
                run.decoder(device=device)
                if isinstance(run, ModelFolder)
                else Decoder.from_checkpoint(run, checkpoint, device=device)
            )
            if job.compile:
                decoder.compile()
            resolved = decoder.resolve(settings)
            log.info(
                "decoding %d input(s) with %s, %d steps, %s, on %d process(es): %s",
                len(pairs),
                resolved.sampler,
                resolved.steps,
                settings.dtype,
                info.world_size,
                checkpoint,
            )
            if warning := top_p_warning(resolved):
                log.warning("%s", warning)
            folder = contained(  # a run named '..' or '' never leads above --out_dir
                job.out_dir,
                Path(run.name or "run")
                / samples_dir_name(checkpoint.name, resolved, input_label=label),
                "the output folder",
            )
            inputs = decoder.encode(pairs)
            if info.is_main:
                inputs.unknown.report(log, "decode inputs")
            paths = decode_to_files(
                decoder,
                inputs,
                resolved,
                out_folder=folder,
                note=job.note,
                append=job.append,
                clean=job.cut_at_sep,
                info={"checkpoint": str(checkpoint)},
            )
            if job.text and info.is_main:
                print_candidates(paths, decoder.tokenizer.special_tokens)
    dist.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_decode.py``; user errors exit with status 2 and one paragraph."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
