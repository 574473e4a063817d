"""Decoding benchmark: quality and speed of the samplers, and seconds per denoising step.

Two modes (from the repository root):

``demo RUN_DIR``: decode a split of a trained run with full-step ancestral sampling (the
original's setting, T model calls) and with DDIM and DPM-Solver++ at ``--steps`` (default 5, 10,
20, 50). Reports BLEU (``diffuseq.evaluation.metrics`` sentence BLEU averaged over sentences, after the
evaluator's clean-up, docs/original.md §7) and wall-clock seconds (median over ``--repeats``), prints the
exact command and writes a markdown table::

    python -m bench.bench_decode demo diffusion_models/<demo run> --out bench/results_decode.md

``per-step``: seconds per denoising step of the paper-size model (bert-base encoder, V = 30522,
hidden_dim 128, random weights; 64 sentences × 128 positions): one ancestral step = network
forward + nearest-embedding rounding + posterior update, for fp32 and bf16 autocast, to
compare with the original's 12.9 s/step on the 2-core CPU of the development machine::

    python -m bench.bench_decode per-step --repeats 3 --out bench/results_decode_step.md

``per-step --compile`` also times each dtype with the network compiled (``--compile`` of
``run_decode.py``: :meth:`diffuseq.decoding.job.Decoder.compile`'s settings), eager and compiled
alternating in one process, and reports compiled / eager::

    python -m bench.bench_decode per-step --compile --dtypes fp32 --repeats 5 --out bench/results_decode_compile.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from diffuseq.config import DTYPES

ORIGINAL_S_PER_STEP = 12.9  # the original code, fp32, this 2-core CPU (paper model, 64 × 128)
ORIGINAL_DPM_S_PER_STEP = 9.6  # the original v2 code, DPM-Solver++, same model and batch
DPM_STEPS = 2  # model calls of the timed DPM-Solver++ run (its mean per step is reported)


def _command() -> str:
    return "python -m bench.bench_decode " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _write(path: str, lines: list[str]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(lines) + "\n")
        print(f"wrote {path}")


# ---------------------------------------------------------------------------------- demo mode


def _bleu(records: list[list[dict[str, str]]], special_tokens: dict[str, str]) -> float:
    from diffuseq.evaluation import metrics
    from diffuseq.evaluation.job import SpecialTokens, clean_example

    tokens = SpecialTokens(
        sos=special_tokens["sos"],
        eos=special_tokens["eos"],
        sep=special_tokens["sep"],
        pad=special_tokens["pad"],
    )
    cleaned = [clean_example(per_source[0], tokens) for per_source in records]
    return statistics.fmean(metrics.sentence_bleu(e.recover, e.reference) for e in cleaned)


def run_demo(args: argparse.Namespace) -> list[str]:
    from diffuseq.config import DecodeConfig
    from diffuseq.data.dataset import read_pairs
    from diffuseq.decoding.job import Decoder
    from diffuseq.store.run_folder import open_run

    run = open_run(args.run_dir)
    checkpoint = run.select_checkpoints(args.pattern, "latest")[0]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    decoder = Decoder.from_checkpoint(run, checkpoint, device=device)
    pairs = read_pairs(run.split_path(args.split))[: args.limit or None]
    inputs = decoder.encode(pairs)
    T = decoder.diffusion.num_timesteps
    configs = [("ancestral", T)] if not args.skip_ancestral else []
    configs += [(s, n) for n in args.steps for s in args.samplers if n <= T]
    warm = type(inputs)(inputs.input_ids[:1], inputs.input_mask[:1])
    for sampler in {
        s for s, _ in configs if s != "ancestral"
    }:  # imports and first-call set-up, untimed
        decoder.generate(warm, DecodeConfig(sampler=sampler, steps=2, dtype=args.dtype))
    rows = []
    for sampler, steps in configs:
        settings = DecodeConfig(
            sampler=sampler, steps=steps, seed=args.seed, batch_size=args.bsz, dtype=args.dtype
        )
        seconds, records = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            records = decoder.generate(inputs, settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        bleu = _bleu(records, decoder.tokenizer.special_tokens)
        rows.append((sampler, steps, bleu, statistics.median(seconds)))
        print(
            f"{sampler:>13} {steps:>5} steps  BLEU {bleu:.4f}  {statistics.median(seconds):8.2f} s",
            flush=True,
        )
    base = rows[0][3] if rows and rows[0][0] == "ancestral" else None
    lines = [
        "# Decoding benchmark: samplers on a trained run",
        "",
        f"Command: `{_command()}`",
        "",
        (
            f"Run: `{run.path}`, checkpoint `{checkpoint.name}`, split `{args.split}` ({len(inputs)} examples), "
            f"T = {T}, seed {args.seed}, bsz {args.bsz}, {args.dtype}, device {device} ({_machine()}). "
            f"BLEU: average sentence BLEU (nltk method4 formula) after the evaluator's clean-up; seconds: median of "
            f"{args.repeats} repeat(s), whole split."
        ),
        "",
        "| sampler | steps | BLEU | seconds | speed-up vs ancestral |",
        "|---|---:|---:|---:|---:|",
    ]
    for sampler, steps, bleu, sec in rows:
        speed = f"{base / sec:.1f}x" if base else "-"
        lines.append(f"| {sampler} | {steps} | {bleu:.4f} | {sec:.2f} | {speed} |")
    return lines


# ------------------------------------------------------------------------------- per-step mode


def _paper_model(hidden_dim: int, vocab_size: int, seq_len: int, num_layers: int = 0):
    from diffuseq.models.denoiser import TransformerNetModel
    from diffuseq.models.encoder_config import build_bert_config

    torch.manual_seed(0)
    bert = build_bert_config("bert-base-uncased", dropout=0.0, num_layers=num_layers or None)
    model = TransformerNetModel(
        vocab_size=vocab_size,
        hidden_dim=hidden_dim,
        hidden_t_dim=128,
        dropout=0.0,
        bert_config=bert,
    )
    return model.eval().requires_grad_(False)


def run_per_step(args: argparse.Namespace) -> list[str]:
    import copy

    from diffuseq.diffusion.gaussian import GaussianDiffusion
    from diffuseq.runtime.perf import compile_model, device_clock
    from diffuseq.sampling.dpm_solver import dpm_solver_sample
    from diffuseq.sampling.inputs import Autocast, SamplerInputs, torch_dtype
    from diffuseq.sampling.noise import NoiseSource
    from diffuseq.sampling.rounding import make_rounding_fn

    device = torch.device(args.device or "cpu")
    model = _paper_model(args.hidden_dim, args.vocab_size, args.seq_len, args.num_layers)
    model = model.to(device)
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=2000)
    B, L = args.batch, args.seq_len
    ids = torch.randint(min(1000, args.vocab_size // 2), args.vocab_size, (B, L), device=device)
    mask = torch.zeros(B, L, dtype=torch.long, device=device)
    mask[:, L // 2 :] = 1
    x_start = model.get_embeds(ids)
    x = torch.where(mask.unsqueeze(-1) == 0, x_start, torch.randn_like(x_start))
    rounding = make_rounding_fn(model.embedding_table())
    t = torch.full((B,), 1000, device=device)
    noise = NoiseSource(list(range(B)), list(range(B)), shape=(L, args.hidden_dim), device=device)

    clock = device_clock(device)
    networks = {"eager": model}
    if args.compile:  # the decode job's settings (Decoder.compile): default mode, static shapes
        networks["compiled"] = copy.deepcopy(model)
        if not compile_model(networks["compiled"], device=device, what="bench --compile"):
            raise SystemExit("--compile: torch.compile is not available here (see the warning)")
    variants = [(d, kind) for d in args.dtypes for kind in networks]

    def step(dtype: str, kind: str) -> dict[str, float]:
        model = networks[kind]
        net = model if dtype == "fp32" else Autocast(model, torch_dtype(dtype), device)
        t0 = clock()
        with torch.no_grad():
            out = net(x, diffusion.scale_timesteps(t))
            t1 = clock()
            rounding(out)
            t2 = clock()
            diffusion.p_sample(
                net, x, t, mask=mask, x_start=x_start, noise=noise.gaussian(), denoised_fn=rounding
            )
            t3 = clock()
            dpm_solver_sample(  # wraps the raw model in Autocast itself
                SamplerInputs(
                    model,
                    diffusion,
                    x,
                    input_mask=mask,
                    x_start=x_start,
                    denoised_fn=rounding,
                    steps=DPM_STEPS,
                    dtype=dtype,
                )
            )
            t4 = clock()
        return {
            "forward": t1 - t0,
            "rounding": t2 - t1,
            "step": t3 - t2,
            "dpm_step": (t4 - t3) / DPM_STEPS,
        }

    results: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    for v in variants:  # warm-up (compiles the compiled network)
        start = time.perf_counter()
        step(*v)
        print(f"warm-up {v[0]} {v[1]}: {time.perf_counter() - start:.1f} s", flush=True)
    for r in range(args.repeats):  # interleaved, so load drift hits every variant alike
        for v in variants if r % 2 == 0 else variants[::-1]:
            results[v].append(step(*v))
            print(f"repeat {r}: {v[0]} {v[1]} {results[v][-1]}", flush=True)
    lines = [
        "# Decoding benchmark: seconds per denoising step, paper-size model",
        "",
        f"Command: `{_command()}`",
        "",
        (
            f"Model: bert-base encoder ({args.num_layers or 12} × 768), V = {args.vocab_size}, hidden_dim {args.hidden_dim}, random weights; "
            f"batch {B} × {L} positions; device {device} ({_machine()}). One step = the ancestral step "
            "`GaussianDiffusion.p_sample` (network forward + nearest-embedding rounding over the whole vocabulary "
            f"+ posterior update); a DPM-Solver++ step = one step of a {DPM_STEPS}-step "
            "`samplers.dpm_solver_sample` run (forward + rounding + diffusers' update), its total / "
            f"{DPM_STEPS}. Medians of {args.repeats} repeat(s) after one warm-up. The original code on "
            f"this CPU (fp32): {ORIGINAL_S_PER_STEP} s per v1 step, {ORIGINAL_DPM_S_PER_STEP} s per "
            "v2 DPM-Solver++ step."
        ),
        "",
        "| dtype | network | forward s | rounding s | ancestral step s | / original v1 step "
        "| DPM-Solver++ step s | / original v2 step | eager / this (step, DPM step) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    medians = {
        v: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for v, runs in results.items()
    }
    for (d, kind), med in medians.items():
        eager = medians[(d, "eager")]
        lines.append(
            f"| {d} | {kind} | {med['forward']:.2f} | {med['rounding']:.2f} | {med['step']:.2f} | "
            f"{med['step'] / ORIGINAL_S_PER_STEP:.2f} | {med['dpm_step']:.2f} | "
            f"{med['dpm_step'] / ORIGINAL_DPM_S_PER_STEP:.2f} | "
            f"{eager['step'] / med['step']:.2f}x, {eager['dpm_step'] / med['dpm_step']:.2f}x |"
        )
    if args.compile:
        lines += [
            "",
            f"Compiled: `torch.compile` of the network (mode default, static shapes), as "
            f"`run_decode.py --compile`; rounding and the update stay eager. Load average when "
            f"done: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        ]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="mode", required=True)
    demo = sub.add_parser("demo", help="BLEU and seconds per sampler on a trained run folder")
    demo.add_argument("run_dir", help="run folder written by training (ours or the original's)")
    demo.add_argument("--split", default="test", help="split to decode (default test)")
    demo.add_argument(
        "--limit", type=int, default=0, help="decode only the first N examples (0 = all)"
    )
    demo.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[5, 10, 20, 50],
        help="step counts of the fast samplers",
    )
    demo.add_argument(
        "--samplers", nargs="+", default=["ddim", "dpm-solver++"], help="fast samplers to run"
    )
    demo.add_argument(
        "--skip_ancestral",
        action="store_true",
        help="do not run the full T-step ancestral baseline",
    )
    demo.add_argument(
        "--pattern", default="ema", help="checkpoint prefix (the newest match is used)"
    )
    demo.add_argument("--bsz", type=int, default=50, help="sequences per model call")
    demo.add_argument("--seed", type=int, default=101, help="decoding seed")
    demo.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="autocast dtype")
    demo.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    demo.add_argument("--device", default="", help="cpu or cuda (default: cuda if available)")
    demo.add_argument(
        "--out", default="bench/results_decode.md", help="markdown table to write ('' = none)"
    )
    step = sub.add_parser("per-step", help="seconds per denoising step of the paper-size model")
    step.add_argument("--batch", type=int, default=64, help="sentences per batch")
    step.add_argument("--seq_len", type=int, default=128, help="positions per sentence")
    step.add_argument("--hidden_dim", type=int, default=128, help="word-embedding size h")
    step.add_argument(
        "--num_layers", type=int, default=0, help="encoder layers (0 = bert-base's 12)"
    )
    step.add_argument(
        "--vocab_size", type=int, default=30522, help="vocabulary size (bert-base-uncased)"
    )
    step.add_argument(
        "--dtypes",
        nargs="+",
        default=["fp32", "bf16"],
        choices=tuple(DTYPES),
        help="autocast dtypes to time",
    )
    step.add_argument(
        "--repeats", type=int, default=3, help="timed steps per dtype (median reported)"
    )
    step.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)"
    )
    step.add_argument(
        "--compile",
        action="store_true",
        help="also time each dtype with the network compiled (run_decode.py --compile)",
    )
    step.add_argument("--device", default="", help="cpu or cuda (default cpu)")
    step.add_argument(
        "--out", default="bench/results_decode_step.md", help="markdown table to write ('' = none)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    lines = run_demo(args) if args.mode == "demo" else run_per_step(args)
    print("\n".join(lines))
    _write(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
