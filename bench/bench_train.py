"""Training-step benchmark: seconds per optimizer step, tokens/s, peak RSS and the step-0 loss.

One measured step is the trainer's real step, :meth:`diffuseq.training.trainer.Trainer.run_step`
(forward + backward over the micro-batches, AdamW with the LR anneal, EMA update, metric
logging), on random token ids laid out like real data (``[CLS] x [SEP] [SEP] [CLS] y [SEP]
[PAD]...`` built by :func:`diffuseq.data.dataset.merge_and_mask`, source/target lengths drawn like QQP's).

Each (config, variant, repeat) runs in a fresh child process, so its peak RSS
(``ru_maxrss``) is its own and variants cannot warm each other's caches; the runs are
interleaved (A B C, C B A, A B C, ...) so that load drift on a shared machine hits every variant
alike. Reported figures are medians over the repeats of each child's median step time.

Configs (``--configs``):
  paper64, paper128  the paper's QQP recipe: bert-base-uncased encoder (12 x 768), V=30522,
                     hidden_dim 128, T=2000 sqrt, lossaware sampler, bsz 64 = microbatch 64,
                     seed 102, seq_len 64 / 128;
  demo               configs/demo.yaml with its tokenizer's vocabulary;
  tiny               a 2-layer toy model (seconds; for trying the script out).

Variants (``--variants``, dash-separated tokens, e.g. ``bf16-sdpa-compile``):
  fp32 | bf16        no autocast | ``--bf16`` autocast (TrainConfig.bf16);
  sdpa | eager       attention kernel (ModelConfig.attention);
  compile            ``torch.compile`` of the model (diffuseq.runtime.perf.maybe_compile);
  t<N>               N torch intra-op threads (default: one per core);
  fusedadam | foreachadam | loopadam
                     replace the trainer's AdamW by the fused / foreach / for-loop implementation;
  naiveloss          the original's loss memory profile: full [B*L, V] log-softmax for both
                     vocabulary projections and the logged nll with autograd (see naive_losses);
  mmap<N>m           run the child with MALLOC_MMAP_THRESHOLD_=N MiB (glibc): tensors of N MiB
                     and more are returned to the OS when freed, so RSS follows live memory.

Examples (from the repository root):
  python -m bench.bench_train --configs tiny --variants fp32-sdpa,bf16-sdpa --repeats 2
  python -m bench.bench_train --configs paper64,paper128 --variants fp32-eager-naiveloss-loopadam,fp32-sdpa,bf16-sdpa \
      --warmup 1 --steps 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "data" / "train.json"

# The original code on this machine (2 cores, torch 2.13 CPU, fp32): s/step and peak RSS (GiB).
REFERENCE = {
    "paper64": {"s_per_step": 21.9, "peak_rss_gib": 8.6, "step0_loss": 0.9391},
    "paper128": {"s_per_step": 45.7, "peak_rss_gib": 15.5, "step0_loss": 0.8789},
}
# Targets of issue 6: speed-up >= 1.8x, peak RSS <= 0.5x of the original.
TARGET_SPEEDUP, TARGET_RSS_RATIO = 1.8, 0.5

# bert-base-uncased special ids (the paper config runs on random ids of that vocabulary).
BERT_CLS, BERT_SEP, BERT_PAD, BERT_FIRST_WORD = 101, 102, 0, 1996


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class BenchConfig:
    name: str
    seq_len: int
    batch_size: int
    microbatch: int
    vocab_size: int
    model: Any  # ModelConfig
    diffusion: Any  # DiffusionConfig
    seed: int
    cls_id: int = BERT_CLS
    sep_id: int = BERT_SEP
    pad_id: int = BERT_PAD
    first_word_id: int = BERT_FIRST_WORD
    src_len: tuple[int, int] = (8, 24)  # [CLS] x [SEP] lengths drawn uniformly in this range
    trg_len: tuple[int, int] = (8, 24)


def make_config(name: str) -> BenchConfig:
    from diffuseq.config import DiffusionConfig, ModelConfig

    paper_diffusion = DiffusionConfig(
        diffusion_steps=2000, noise_schedule="sqrt", schedule_sampler="lossaware"
    )
    if name in ("paper64", "paper128"):
        return BenchConfig(
            name=name,
            seq_len=int(name[5:]),
            batch_size=64,
            microbatch=64,
            vocab_size=30522,
            model=ModelConfig(
                hidden_dim=128, hidden_t_dim=128, dropout=0.1, config_name="bert-base-uncased"
            ),
            diffusion=paper_diffusion,
            seed=102,
        )
    if name == "tiny":
        return BenchConfig(
            name=name,
            seq_len=32,
            batch_size=16,
            microbatch=16,
            vocab_size=1000,
            model=ModelConfig(
                hidden_dim=32,
                hidden_t_dim=32,
                num_layers=2,
                num_heads=2,
                bert_hidden_size=64,
                intermediate_size=256,
            ),
            diffusion=paper_diffusion,
            seed=102,
            first_word_id=5,
            src_len=(4, 10),
            trg_len=(4, 10),
        )
    if name == "demo":
        return _demo_config()
    raise SystemExit(f"unknown config {name!r}; choose from paper64, paper128, demo, tiny")


def _demo_config() -> BenchConfig:
    from diffuseq.config import RunConfig
    from diffuseq.tokenizers.tokenizer import load_tokenizer

    path = REPO / "configs" / "demo.yaml"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist yet; run the other configs")
    run = RunConfig.load_yaml(path)
    data_dir = Path(run.data.data_dir)
    data_dir = data_dir if data_dir.is_absolute() else REPO / data_dir
    tokenizer = load_tokenizer(
        run.data.vocab, config_name=run.model.config_name, train_files=[data_dir / "train.jsonl"]
    )
    ids = tokenizer.encode(["a"])[0]  # [CLS]-like first id, [SEP]-like last id
    return BenchConfig(
        name="demo",
        seq_len=run.data.seq_len,
        batch_size=run.train.batch_size,
        microbatch=run.train.effective_microbatch,
        vocab_size=tokenizer.vocab_size,
        model=run.model,
        diffusion=run.diffusion,
        seed=run.train.seed,
        cls_id=ids[0],
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
        src_len=(6, 14),
        trg_len=(6, 14),
        # word ids drawn above the special tokens (which come first in the built vocabularies)
        first_word_id=1 + max(ids[0], ids[-1], tokenizer.pad_token_id, tokenizer.sep_token_id),
    )


# ----------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool = False
    attention: str = "sdpa"
    compile: bool = False
    threads: int = 0  # 0: one per core
    adam: str = ""  # "", "fused", "foreach", "loop"
    naive_loss: bool = False
    mmap_threshold_mib: int = 0  # 0: glibc's default (dynamic) mmap threshold


def parse_variant(name: str) -> Variant:
    fields: dict[str, Any] = {}
    for token in name.split("-"):
        if token in ("fp32", "bf16"):
            fields["bf16"] = token == "bf16"
        elif token in ("sdpa", "eager"):
            fields["attention"] = token
        elif token == "compile":
            fields["compile"] = True
        elif token.startswith("t") and token[1:].isdigit():
            fields["threads"] = int(token[1:])
        elif token in ("fusedadam", "foreachadam", "loopadam"):
            fields["adam"] = token[: -len("adam")]
        elif token == "naiveloss":
            fields["naive_loss"] = True
        elif token.startswith("mmap") and token.endswith("m") and token[4:-1].isdigit():
            fields["mmap_threshold_mib"] = int(token[4:-1])
        else:
            raise SystemExit(f"variant {name!r}: unknown token {token!r} (see --help)")
    return Variant(name=name, **fields)


# ----------------------------------------------------------------------------------- child
def random_batches(cfg: BenchConfig, count: int, seed: int) -> list[dict]:
    """``count`` batches of ``{"input_ids", "input_mask"}`` int64 ``[B, L]`` (deterministic)."""
    import numpy as np
    import torch

    from diffuseq.data.dataset import merge_and_mask

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        ids, masks = [], []
        for _ in range(cfg.batch_size):
            src, trg = (
                [
                    cfg.cls_id,
                    *map(
                        int,
                        rng.integers(cfg.first_word_id, cfg.vocab_size, rng.integers(*span) - 2),
                    ),
                    cfg.sep_id,
                ]
                for span in (cfg.src_len, cfg.trg_len)
            )
            i, m = merge_and_mask(
                src, trg, seq_len=cfg.seq_len, sep_token_id=cfg.sep_id, pad_token_id=cfg.pad_id
            )
            ids.append(i)
            masks.append(m)
        batches.append({"input_ids": torch.tensor(ids), "input_mask": torch.tensor(masks)})
    return batches


def naive_losses(diffusion, model, input_ids, input_mask, t, *, text_model=None, **_):
    """The original's ``training_losses_seq2seq`` cost profile (docs/original.md §5.6): both vocabulary
    projections materialise full ``[B, L, V]`` logits and log-softmax, the logged ``nll`` keeps
    its autograd graph. Same numbers as the library's loss; used only to compare costs."""
    import torch
    import torch.nn.functional as F

    from diffuseq.models.nn_utils import mean_flat

    text_model = model if text_model is None else text_model

    def token_nll(logits, ids, mask=None):
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), ids.reshape(-1), reduction="none"
        ).view(ids.shape)
        return nll.mean(-1) if mask is None else (nll * mask).sum(-1) / mask.sum(-1)

    x_start_mean = text_model.get_embeds(input_ids)
    x_start = diffusion.get_x_start(x_start_mean, noise0=torch.randn_like(x_start_mean))
    noise = torch.randn_like(x_start)
    x_t = diffusion.q_sample(x_start, t, noise=noise, mask=input_mask)
    out = model(x_t, diffusion.scale_timesteps(t))
    t0 = mean_flat((x_start_mean - out) ** 2)
    mse = torch.where(t == 0, t0, mean_flat((x_start - out) ** 2))
    last = torch.full((1,), diffusion.num_timesteps - 1, dtype=torch.long)
    tT = mean_flat(diffusion.q_mean_variance(x_start, last)[0] ** 2)
    decoder_nll = token_nll(text_model.get_logits(x_start), input_ids)
    nll = token_nll(text_model.get_logits(out), input_ids, input_mask)
    return {"loss": mse + (decoder_nll + tT), "mse": mse, "nll": nll}


def run_child(args: argparse.Namespace) -> dict:
    """Build one config/variant, run ``warmup + steps`` trainer steps, return the measurements."""
    variant = parse_variant(args.variant)
    from diffuseq.runtime import perf

    threads = perf.set_threads(variant.threads or None)
    import torch

    from diffuseq.config import TrainConfig
    from diffuseq.diffusion.losses import training_losses
    from diffuseq.families.gaussian import GaussianObjective
    from diffuseq.models.factory import build_diffusion, build_model, build_timestep_distribution
    from diffuseq.runtime.logger import MetricsWriter
    from diffuseq.store.checkpoint import seed_everything
    from diffuseq.training.trainer import Trainer

    cfg = make_config(args.config)
    seed_everything(cfg.seed)
    model_cfg = replace(cfg.model, attention=variant.attention)
    train_cfg = TrainConfig(
        batch_size=cfg.batch_size,
        microbatch=cfg.microbatch,
        lr=1e-4,
        learning_steps=10_000,
        bf16=variant.bf16,
        seed=cfg.seed,
    )
    device = torch.device(args.device)
    t_build = time.perf_counter()
    model = build_model(model_cfg, vocab_size=cfg.vocab_size).to(device)
    diffusion = build_diffusion(cfg.diffusion)
    sampler = build_timestep_distribution(cfg.diffusion, diffusion)
    perf.maybe_compile(model, variant.compile)
    writer = MetricsWriter(path=None, enabled=True, console=False)
    batches = random_batches(cfg, args.warmup + args.steps, seed=cfg.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model=model,
            objective=GaussianObjective(diffusion, sampler),
            train_batches=iter(batches),
            valid_batches=None,
            config=train_cfg,
            run_dir=run_dir,
            device=device,
            writer=writer,
            progress=False,
            loss_fn=naive_losses if variant.naive_loss else training_losses,
        )
        if variant.adam:
            kind = {
                "fused": {"fused": True},
                "foreach": {"foreach": True},
                "loop": {"foreach": False},
            }[variant.adam]
            trainer.opt = torch.optim.AdamW(
                trainer.params,
                lr=train_cfg.lr,
                betas=(0.9, 0.999),
                eps=1e-8,
                weight_decay=train_cfg.weight_decay,
                **kind,
            )
        build_s = time.perf_counter() - t_build
        rss_built = perf.peak_rss_bytes()
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        clock = perf.device_clock(device)
        times, losses = [], []
        for batch in batches:
            start = clock()
            trainer.run_step(batch)
            elapsed = clock() - start
            record = writer.dump()
            losses.append(float(record.get("loss", float("nan"))))
            times.append(elapsed)
    measured = times[args.warmup :]
    return {
        "config": cfg.name,
        "variant": variant.name,
        "threads": threads,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "tokens_per_step": cfg.batch_size * cfg.seq_len,
        "build_s": build_s,
        "step_times": times,
        "warmup": args.warmup,
        "median_s": statistics.median(measured) if measured else float("nan"),
        "step0_loss": losses[0],
        "losses": losses,
        "peak_rss_bytes": perf.peak_rss_bytes(),
        "rss_after_build_bytes": rss_built,
        "params": model.parameter_count(),
        "device": device.type,
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


# ----------------------------------------------------------------------------------- parent
def machine_info(device: str = "cpu") -> dict:
    import torch

    from diffuseq.runtime import perf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": perf.physical_cores(),
        "bf16_native": perf.cpu_has_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "matmul_fp32_gflops": round(matmul_gflops(), 1),
        **({"gpu": torch.cuda.get_device_name()} if device == "cuda" else {}),
    }


def matmul_gflops(seconds: float = 1.0) -> float:
    """A quick fp32 GEMM probe (8192x768 @ 768x3072, the BERT FFN shape): median GFLOP/s."""
    import torch

    a, b = torch.randn(8192, 768), torch.randn(768, 3072)
    a @ b
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 8192 * 768 * 3072 / statistics.median(times) / 1e9


def child_command(args: argparse.Namespace, config: str, variant: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.bench_train",
        "--child",
        "--config",
        config,
        "--variant",
        variant,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]


def run_one(args: argparse.Namespace, config: str, variant: str) -> dict:
    env = dict(os.environ)
    v = parse_variant(variant)
    if v.threads:
        env["OMP_NUM_THREADS"] = str(v.threads)
    if v.mmap_threshold_mib:
        env["MALLOC_MMAP_THRESHOLD_"] = str(v.mmap_threshold_mib * 2**20)
    load = os.getloadavg()[0]
    proc = subprocess.run(
        child_command(args, config, variant),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"config": config, "variant": variant, "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["loadavg_before"] = load
    return result


def summarise(runs: list[dict], cells: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for config, variant in cells:
        ok = [
            r
            for r in runs
            if r["config"] == config and r["variant"] == variant and "error" not in r
        ]
        if not ok:
            rows.append(
                {
                    "config": config,
                    "variant": variant,
                    "error": next(
                        (
                            r["error"]
                            for r in runs
                            if r["config"] == config and r["variant"] == variant
                        ),
                        "no run",
                    ),
                }
            )
            continue
        med = statistics.median(r["median_s"] for r in ok)
        rows.append(
            {
                "config": config,
                "variant": variant,
                "runs": len(ok),
                "s_per_step": med,
                "s_per_step_min": min(
                    min(r["step_times"][r["warmup"] :] or [float("nan")]) for r in ok
                ),
                "tokens_per_s": ok[0]["tokens_per_step"] / med,
                "peak_rss_gib": statistics.median(r["peak_rss_bytes"] for r in ok) / 2**30,
                "step0_loss": ok[0]["step0_loss"],
                "device": ok[0].get("device", "cpu"),
                **(
                    {"peak_gpu_gib": statistics.median(r["peak_device_bytes"] for r in ok) / 2**30}
                    if ok[0].get("peak_device_bytes") is not None
                    else {}
                ),
                "first_step_s": statistics.median(r["step_times"][0] for r in ok),
            }
        )
    # Ratios: against the first variant of the same config, and against the original's figures.
    for row in rows:
        if "error" in row:
            continue
        base = next(r for r in rows if r["config"] == row["config"] and "error" not in r)
        row["speedup_vs_first"] = base["s_per_step"] / row["s_per_step"]
        ref = REFERENCE.get(row["config"]) if row["device"] == "cpu" else None  # CPU figures
        if ref:
            row["speedup_vs_original"] = ref["s_per_step"] / row["s_per_step"]
            row["rss_vs_original"] = row["peak_rss_gib"] / ref["peak_rss_gib"]
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| config | variant | runs | s/step (median) | min | tokens/s | peak RSS GiB | step-0 loss "
        "| x first variant | x original (s/step) | RSS / original |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['config']} | {r['variant']} | failed: {r['error'].splitlines()[-1][:80]} |"
            )
            continue
        fmt = lambda key, spec: format(r[key], spec) if key in r else "-"  # noqa: E731
        gpu = f" (GPU {r['peak_gpu_gib']:.2f})" if "peak_gpu_gib" in r else ""
        lines.append(
            f"| {r['config']} | {r['variant']} | {r['runs']} | {r['s_per_step']:.3f} | {r['s_per_step_min']:.3f} "
            f"| {r['tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f}{gpu} | {r['step0_loss']:.4f} "
            f"| {r['speedup_vs_first']:.2f} | {fmt('speedup_vs_original', '.2f')} | {fmt('rss_vs_original', '.2f')} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--configs", default="paper64,paper128,demo", help="comma-separated config names"
    )
    parser.add_argument(
        "--variants",
        default="fp32-sdpa,fp32-eager,bf16-sdpa",
        help="comma-separated variants; ratios are reported against the first one",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured steps per run (step 0 gives the loss)"
    )
    parser.add_argument("--steps", type=int, default=2, help="measured steps per run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per (config, variant), interleaved"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds allowed per child run"
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="results JSON (a .md table is written next to it)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device of the trained model (cuda: peak GPU memory is added to the table; "
        "the ratios against the original's CPU figures are left out)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0

    command = "python -m bench.bench_train " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"command: {command}", flush=True)
    configs = [c for c in args.configs.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        parse_variant(v)
    cells = [(c, v) for c in configs for v in variants]
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    info = machine_info(args.device)
    print(f"machine: {json.dumps(info)}", flush=True)
    runs = []
    for repeat in range(args.repeats):
        order = cells if repeat % 2 == 0 else cells[::-1]  # A B C, C B A, ...
        for config, variant in order:
            result = run_one(args, config, variant)
            runs.append(result)
            if "error" in result:
                print(
                    f"  [{repeat}] {config} {variant}: FAILED {result['error'][-400:]}", flush=True
                )
            else:
                print(
                    f"  [{repeat}] {config} {variant}: {result['median_s']:.3f} s/step, "
                    f"peak {result['peak_rss_bytes'] / 2**30:.2f} GiB, step-0 loss {result['step0_loss']:.4f}, "
                    f"load {result['loadavg_before']:.1f}",
                    flush=True,
                )
    rows = summarise(runs, cells)
    table = markdown_table(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "machine": info,
        "reference": REFERENCE,
        "args": vars(args),
        "summary": rows,
        "runs": runs,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(
        f"command: `{command}`\n\nmachine: {json.dumps(info)}\n\n{table}"
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
