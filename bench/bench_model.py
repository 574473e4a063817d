"""Decode-step micro-benchmark at paper size: model forward and nearest-embedding rounding.

One denoising step of the decoder costs one model forward on ``[B, L, h]`` (eval mode, no
dropout, no autograd) plus the rounding of ``B·L`` positions to the nearest of ``V`` word
embeddings (:func:`diffuseq.sampling.rounding.make_rounding_fn`). This script times both separately
and together for the paper's model (bert-base-uncased encoder, V=30522, h=128) on
``--batch`` x ``--seq_len`` positions (default 64 x 128, the issue's decode reference), with
random weights and inputs (speed does not depend on the values).

Variants (``--variants``, dash-separated tokens as in bench_train):
  fp32 | bf16   model forward without / with bf16 autocast (the rounding always runs in fp32,
                so that token choices keep fp32 distances);
  sdpa | eager  attention kernel (without dropout, SDPA runs the fused flash kernel on CPU);
  compile       torch.compile of the model;
  t<N>          N torch threads.

Each variant runs in a fresh child process (own peak RSS), interleaved over ``--repeats``.

    python -m bench.bench_model --variants fp32-eager,fp32-sdpa,bf16-sdpa --repeats 3
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.bench_train import (
    REPO,
    BenchOptions,
    child_flags,
    machine_info,
    parse_bench_flags,
    parse_variant,
)
from diffuseq.cli.common import run_cli
from diffuseq.config import opt

DEFAULT_OUT = REPO / "bench" / "data" / "model.json"
PROG = "python -m bench.bench_model"
# The original code on this machine: seconds per denoising step for 64 x 128 positions.
REFERENCE = {
    "v1_ddim_step_s": 12.9,
    "v2_dpm_step_s": 9.6,
    "v1_peak_rss_gib": 4.0,
    "v2_peak_rss_gib": 2.1,
}
TARGET_STEP_RATIO = 0.6


@dataclass(frozen=True)
class ModelBenchOptions(BenchOptions):
    """What to measure."""

    variants: str = opt(
        "fp32-eager,fp32-sdpa,bf16-sdpa",
        "comma-separated variants; ratios are reported against the first one",
    )
    batch: int = opt(64, "sentences per step")
    seq_len: int = opt(128, "positions per sentence")
    vocab_size: int = opt(30522, "rows of the embedding to round to")
    warmup: int = opt(1, "unmeasured calls after the first one")
    iters: int = opt(3, "measured calls per child run")
    out: str = opt(
        str(DEFAULT_OUT),
        "results JSON, default bench/data/model.json (a .md table is written next to it)",
    )


def run_child(options: ModelBenchOptions, variant_name: str) -> dict:
    variant = parse_variant(variant_name)
    from diffuseq.runtime import perf

    threads = perf.set_threads(variant.threads or None)
    import contextlib

    import torch

    from diffuseq.config import ModelConfig
    from diffuseq.models.factory import build_model
    from diffuseq.sampling.rounding import make_rounding_fn

    torch.manual_seed(102)
    cfg = ModelConfig(
        hidden_dim=128,
        hidden_t_dim=128,
        dropout=0.1,
        config_name="bert-base-uncased",
        attention=variant.attention,
    )
    device = torch.device(options.device)
    cuda = device.type == "cuda"
    model = build_model(cfg, vocab_size=options.vocab_size).to(device).eval()
    perf.maybe_compile(model, variant.compile)
    rounding = make_rounding_fn(model.lm_head.weight)
    x = torch.randn(options.batch, options.seq_len, cfg.hidden_dim).to(device)
    t = torch.full((options.batch,), 500.0, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if variant.bf16
        else contextlib.nullcontext()
    )
    clock = perf.device_clock(device)

    def forward():
        with torch.no_grad(), autocast:
            return model(x, t).float()

    def round_():
        with torch.no_grad():
            return rounding(x)

    def step():
        with torch.no_grad():
            return rounding(forward())

    timings: dict[str, list[float]] = {}
    first = {}
    for name, fn in (("forward", forward), ("rounding", round_), ("step", step)):
        start = clock()
        fn()
        first[name] = clock() - start
        for _ in range(options.warmup):
            fn()
        times = []
        for _ in range(options.iters):
            start = clock()
            fn()
            times.append(clock() - start)
        timings[name] = times
    return {
        "variant": variant.name,
        "threads": threads,
        "batch": options.batch,
        "seq_len": options.seq_len,
        "times": timings,
        "first_call_s": first,
        "median_s": {k: statistics.median(v) for k, v in timings.items()},
        "peak_rss_bytes": perf.peak_rss_bytes(),
        "device": device.type,
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; a bad flag prints one paragraph and returns 2."""
    return run_cli(_main, argv, PROG)


def _main(argv: Sequence[str] | None) -> int:
    options, args = parse_bench_flags(ModelBenchOptions, argv, PROG, __doc__)
    if args.child:
        print("RESULT " + json.dumps(run_child(options, args.variant)), flush=True)
        return 0

    command = f"{PROG} " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"command: {command}", flush=True)
    variants = [v for v in options.variants.split(",") if v]
    for v in variants:
        parse_variant(v)
    import torch

    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    info = machine_info(options.device)
    print(f"machine: {json.dumps(info)}", flush=True)
    child_args = child_flags(options, "device", "batch", "seq_len", "vocab_size", "warmup", "iters")
    runs = []
    for repeat in range(options.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            env = dict(os.environ)
            threads = parse_variant(variant).threads
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.bench_model",
                    "--child",
                    "--variant",
                    variant,
                    *child_args,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=options.timeout,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(
                    f"  [{repeat}] {variant}: FAILED {(proc.stderr or proc.stdout)[-2000:]}",
                    flush=True,
                )
                runs.append({"variant": variant, "error": (proc.stderr or proc.stdout)[-3000:]})
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            runs.append(result)
            m = result["median_s"]
            print(
                f"  [{repeat}] {variant}: forward {m['forward']:.3f} s, rounding {m['rounding']:.3f} s, "
                f"step {m['step']:.3f} s, peak {result['peak_rss_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )

    rows = []
    for variant in variants:
        ok = [r for r in runs if r["variant"] == variant and "error" not in r]
        if not ok:
            rows.append({"variant": variant, "error": "all runs failed"})
            continue
        med = {
            k: statistics.median(r["median_s"][k] for r in ok)
            for k in ("forward", "rounding", "step")
        }
        rows.append(
            {
                "variant": variant,
                "runs": len(ok),
                **{f"{k}_s": v for k, v in med.items()},
                "per_sentence_s": med["step"] / options.batch,
                "peak_rss_gib": statistics.median(r["peak_rss_bytes"] for r in ok) / 2**30,
                **(
                    {"peak_gpu_gib": statistics.median(r["peak_device_bytes"] for r in ok) / 2**30}
                    if ok[0].get("peak_device_bytes") is not None
                    else {}
                ),
                "compile_or_first_call_s": statistics.median(
                    r["first_call_s"]["forward"] for r in ok
                ),
            }
        )
    base = next((r for r in rows if "error" not in r), None)
    for row in rows:
        if "error" not in row and base:
            row["step_speedup_vs_first"] = base["step_s"] / row["step_s"]
            if options.device == "cpu":  # the original's figures are CPU figures
                row["step_vs_original_v1"] = row["step_s"] / REFERENCE["v1_ddim_step_s"]
    head = (
        "| variant | runs | forward s | rounding s | step s | s/sentence | peak RSS GiB | x first variant "
        "| step / original v1 (12.9 s) |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed |")
            continue
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['forward_s']:.3f} | {r['rounding_s']:.3f} | {r['step_s']:.3f} "
            f"| {r['per_sentence_s']:.4f} | {r['peak_rss_gib']:.2f}"
            + (f" (GPU {r['peak_gpu_gib']:.2f})" if "peak_gpu_gib" in r else "")
            + f" | {r['step_speedup_vs_first']:.2f} "
            f"| {format(r['step_vs_original_v1'], '.2f') if 'step_vs_original_v1' in r else '-'} |"
        )
    table = head + "\n".join(lines) + "\n"
    print(table)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": command,
                "machine": info,
                "reference": REFERENCE,
                "args": asdict(options),
                "summary": rows,
                "runs": runs,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=1,
        )
    )
    out.with_suffix(".md").write_text(
        f"command: `{command}`\n\nmachine: {json.dumps(info)}\n\n{table}"
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
