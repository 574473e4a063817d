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
from collections.abc import Sequence
from pathlib import Path

import torch

from diffuseq import dist
from diffuseq.cli.common import program_name, run_cli
from diffuseq.decoding import (
    DTYPES,
    SAMPLER_CHOICES,
    Decoder,
    DecodeSettings,
    decode_to_files,
    output_file_name,
    read_input_file,
    samples_dir_name,
)
from diffuseq.errors import ConfigError
from diffuseq.logger import get_logger, setup_logging
from diffuseq.run_folder import open_run, resolve_model_dirs
from diffuseq.safe_io import check_writable_folder

PROG = program_name("run_decode.py", "diffuseq.cli.decode", "diffuseq-decode")


def build_parser() -> argparse.ArgumentParser:
    """The original's flags first, then this toolkit's additions."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model_dir",
        default="",
        help="run folder (a glob: every match is decoded) or one .pt file",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=101,
        help="decoding seed (candidate k of --num_samples uses seed+k)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "valid", "test"),
        help="data split of the run's data_dir to decode (file order)",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="sampling steps (default: the model's T, i.e. the original's 2000 = full ancestral sampling)",
    )
    p.add_argument(
        "--bsz", type=int, default=50, help="sequences per model call (each candidate counts)"
    )
    p.add_argument(
        "--top_p",
        type=float,
        default=-1.0,
        help="the original's noise truncation: redraw noise entries with |x| > top_p (<= 0: off; "
        "ancestral sampler only)",
    )
    p.add_argument(
        "--clamp_step",
        type=int,
        default=0,
        help="round to the nearest word embedding only at levels t >= clamp_step (0: every step)",
    )
    p.add_argument(
        "--pattern", default="ema", help="checkpoint file prefix: <model_dir>/<pattern>*.pt"
    )
    p.add_argument("--out_dir", default="generation_outputs", help="output root folder")
    p.add_argument(
        "--note",
        default=None,
        help="suffix of the output file name: seed{S}_step{clamp}_{note}.json (v2)",
    )
    new = p.add_argument_group("additions")
    new.add_argument(
        "--checkpoint",
        default="latest",
        choices=("latest", "all"),
        help="decode only the newest matching checkpoint (default) or all of them, newest first "
        "(the original)",
    )
    new.add_argument(
        "--sampler",
        default="auto",
        choices=SAMPLER_CHOICES,
        help="auto: ancestral at --step T, else ddim. ancestral: the original's DDPM loop with "
        "rounding; ddim: DDIM eta=0 over --step respaced levels; dpm-solver++: DPM-Solver++(2M)",
    )
    new.add_argument(
        "--ddim_adjacent",
        action="store_true",
        help="with ddim: the original's pseudo-DDIM (steps to the adjacent level, never reaches t=0)",
    )
    new.add_argument(
        "--dpm_v2_variant",
        action="store_true",
        help="with dpm-solver++: DiffuSeq-v2's modified solver loop (reproduces v2 numbers)",
    )
    new.add_argument(
        "--num_samples",
        type=int,
        default=1,
        help="candidates per source in one pass, written to seed{seed+k} files (for MBR)",
    )
    new.add_argument(
        "--input",
        default="",
        metavar="FILE.jsonl",
        help='decode these {"src": ..., "trg": ...} lines (trg optional) instead of --split',
    )
    new.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="SOURCE",
        help="decode this source text instead of --split (repeatable)",
    )
    new.add_argument(
        "--dtype",
        default="fp32",
        choices=tuple(DTYPES),
        help="autocast dtype of the network (rounding and logits stay fp32)",
    )
    new.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda:LOCAL_RANK if CUDA is available, else cpu",
    )
    new.add_argument(
        "--append",
        action="store_true",
        help="append to existing output files (the original) instead of overwriting them",
    )
    new.add_argument(
        "--cut_at_sep",
        action="store_true",
        help="cut texts at the first [SEP]/eos and drop special tokens (off: the original's text)",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> DecodeSettings:
    return DecodeSettings(
        sampler=args.sampler,
        steps=args.step,
        clamp_step=args.clamp_step,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.num_samples,
        batch_size=args.bsz,
        dtype=args.dtype,
        ddim_adjacent=args.ddim_adjacent,
        dpm_v2_variant=args.dpm_v2_variant,
    ).check()


def input_pairs(args: argparse.Namespace, run) -> tuple[list[tuple[str, str]], str]:
    """The pairs to decode and their output-folder label ('' for the test split)."""
    from diffuseq.data import read_pairs

    if args.input and args.text:
        raise ConfigError("give either --input FILE.jsonl or --text, not both")
    if args.text:
        return [(text.strip(), "") for text in args.text], "text"
    if args.input:
        return read_input_file(args.input), f"input-{Path(args.input).stem}"
    return read_pairs(run.split_path(args.split)), "" if args.split == "test" else args.split


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    output_file_name(settings.seed, settings.clamp_step, args.note)  # rejects a bad --note now
    check_writable_folder(args.out_dir, "--out_dir")
    targets = resolve_model_dirs(args.model_dir)
    runs = [(open_run(run_dir), ckpt) for run_dir, ckpt in targets]
    jobs = [
        (run, [ckpt] if ckpt else run.select_checkpoints(args.pattern, args.checkpoint))
        for run, ckpt in runs
    ]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available here; use --device cpu (or auto)"
        )
    info, device = dist.init(device=None if args.device == "auto" else args.device)
    setup_logging(is_main=info.is_main)
    log = get_logger("decode")
    for run, checkpoints in jobs:
        pairs, label = input_pairs(args, run)
        for checkpoint in checkpoints:
            decoder = Decoder.from_checkpoint(run, checkpoint, device=device)
            resolved = settings.resolve(decoder.diffusion.num_timesteps)
            log.info(
                "decoding %d input(s) with %s, %d steps, %s, on %d process(es): %s",
                len(pairs),
                resolved.label,
                resolved.steps,
                args.dtype,
                info.world_size,
                checkpoint,
            )
            if args.top_p > 0 and resolved.sampler != "ancestral":
                log.warning(
                    "--top_p only affects the ancestral sampler; %s draws no noise", resolved.label
                )
            folder = (
                Path(args.out_dir)
                / run.name
                / samples_dir_name(checkpoint.name, resolved, input_label=label)
            )
            decode_to_files(
                decoder,
                decoder.encode(pairs),
                resolved,
                out_folder=folder,
                note=args.note,
                append=args.append,
                clean=args.cut_at_sep,
                info={"checkpoint": str(checkpoint)},
            )
    dist.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_decode.py``; user errors exit with status 2 and one paragraph."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
