"""Data-pipeline benchmark: time to the first training step and peak RSS per rank.

Launches the real training CLI (``diffuseq.cli.train``) on a data folder (a CCD-size one from
``bench/make_ccd_like.py``) with a tiny model, so that everything before the first optimizer
step is data loading: process start, imports, tokenizer, reading + tokenizing (or mapping the
tokenization cache), the sampler's first permutation, one batch. Each launch is a fresh
process (``torchrun`` with gloo for several ranks); a child records, on every rank, the seconds
from the launch to the start of its first ``Trainer.run_step`` and its peak RSS
(``ru_maxrss`` of the rank itself and of any worker processes it started), then the run
finishes its single step.

Variants (``--variants``):
  uncached   ``--data_cache off``: today's build, every rank tokenizes the whole file;
  cached     ``--data_cache DIR`` with a fresh DIR: first launch (rank 0 builds the cache,
             the others wait and map it), then ``--relaunches`` relaunches, each in a new run
             folder (every rank maps the cache).

Each (variant, ranks) is measured in the same invocation, so the baseline and the cache share
the machine's load. Writes ``bench/data/data.json`` and ``bench/data/data.md``: every launch,
then a summary per number of ranks (uncached, cached first launch and the median relaunch, with
their ratios to uncached; peak RSS of the worst rank).

Example (from the repository root):
  python -m bench.make_ccd_like --vocab VOCAB.txt --out bench/out/ccd
  python -m bench.bench_data --data bench/out/ccd --vocab FOLDER_WITH_VOCAB_TXT --ranks 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "data" / "data.json"
T0_ENV = "DIFFUSEQ_BENCH_T0"
REPORT_ENV = "DIFFUSEQ_BENCH_REPORT"

# A tiny denoiser: the model's own cost before the first step is negligible next to the data.
TINY_MODEL = [
    "--hidden_dim", "16", "--hidden_t_dim", "16", "--bert_hidden_size", "32", "--num_layers", "1",
    "--num_heads", "2", "--intermediate_size", "64", "--diff_steps", "100",
]  # fmt: skip


def train_flags(args: argparse.Namespace, run_dir: Path, cache: str | None) -> list[str]:
    """The training command's flags for one launch (one optimizer step, then save)."""
    flags = [
        "--data_dir", args.data, "--vocab", args.vocab, "--seq_len", str(args.seq_len),
        "--bsz", "64", "--microbatch", "64", "--learning_steps", "1", "--save_interval", "1",
        "--eval_interval", "1000000", "--log_interval", "1", "--seed", "102",
        "--checkpoint_path", str(run_dir), "--device", "cpu", "--progress", "false", *TINY_MODEL,
    ]  # fmt: skip
    if cache is not None and _knows_data_cache():
        flags += ["--data_cache", cache]
    return flags


def _knows_data_cache() -> bool:
    """Whether this checkout's training CLI has ``--data_cache`` (builds before it had none)."""
    from diffuseq.cli import train

    return "--data_cache" in train.build_parser().format_help()


# ---------------------------------------------------------------------------------------- child
def child(argv: list[str]) -> int:
    """One rank of a launch: train, reporting time to the first step and peak RSS."""
    from diffuseq.cli import train
    from diffuseq.runtime import dist
    from diffuseq.training.trainer import Trainer

    t0 = float(os.environ[T0_ENV])
    first: dict[str, float] = {}
    run_step = Trainer.run_step

    def timed_run_step(self, batch):
        first.setdefault("first_step_s", time.time() - t0)
        return run_step(self, batch)

    Trainer.run_step = timed_run_step
    rank = int(os.environ.get("RANK", "0"))  # read before training tears the group down
    try:
        status = train.main(argv)
    finally:
        report = {
            "rank": rank,
            "first_step_s": first.get("first_step_s"),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }
        Path(os.environ[REPORT_ENV], f"rank{rank}.json").write_text(json.dumps(report))
    del dist
    return status


# --------------------------------------------------------------------------------------- parent
def launch(args: argparse.Namespace, ranks: int, run_dir: Path, cache: str | None) -> dict:
    """Run one launch; return the per-rank reports and the whole command's wall time."""
    report_dir = Path(tempfile.mkdtemp(prefix="bench_data_"))
    child_cmd = ["-m", "bench.bench_data", "--child", "--", *train_flags(args, run_dir, cache)]
    if ranks == 1:
        cmd = [sys.executable, *child_cmd]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", *child_cmd,
        ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update({T0_ENV: repr(time.time()), REPORT_ENV: str(report_dir), "PYTHONPATH": str(REPO)})
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"launch failed ({proc.returncode}): {shlex.join(cmd)}")
    reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
    shutil.rmtree(report_dir, ignore_errors=True)
    return {"wall_s": wall, "ranks": reports}


def summarize(result: dict) -> dict:
    """Worst rank: the slowest time to the first step and the largest peak RSS."""
    ranks = result["ranks"]
    return {
        "first_step_s": max(r["first_step_s"] for r in ranks),
        "peak_rss_mib": max(max(r["peak_rss_mib"], r["peak_rss_children_mib"]) for r in ranks),
        "wall_s": result["wall_s"],
    }


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="bench_data_runs_", dir=args.scratch))
    try:
        for ranks in args.ranks:
            for variant in args.variants:
                if variant == "uncached":
                    launches = [("launch", "off")]
                elif variant == "cached":
                    cache = str(scratch / f"cache_{ranks}")
                    launches = [("first launch", cache)] + [("relaunch", cache)] * args.relaunches
                else:
                    raise SystemExit(f"--variants: unknown variant {variant!r}")
                for n, (label, cache) in enumerate(launches):
                    run_dir = scratch / f"run_{variant}_{ranks}_{n}"
                    result = launch(args, ranks, run_dir, cache)
                    row = {"variant": variant, "launch": label, "world_size": ranks}
                    row.update(summarize(result))
                    row["per_rank"] = result["ranks"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, pairs: int) -> list[str]:
    lines = [
        f"Data: {args.data} ({pairs} training pairs), seq_len {args.seq_len}, vocab {args.vocab}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Command: `python -m bench.bench_data {shlex.join(args.argv)}`",
        "",
        "| variant | launch | ranks | time to first step (s, slowest rank) | peak RSS per rank (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['launch']} | {r['world_size']} | {r['first_step_s']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    return lines + ["", *summary(rows)]


def summary(rows: list[dict]) -> list[str]:
    """Per number of ranks: uncached, cached first launch, median cached relaunch; the time to
    the first step with its ratio to uncached, and peak RSS per rank (MiB)."""
    lines = [
        "| ranks | uncached (s) | cached, first launch (s) | ratio | cached, relaunch (s, median "
        "of n) | ratio | peak RSS per rank, uncached / first / relaunch (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ranks in sorted({r["world_size"] for r in rows}):

        def pick(variant: str, launch: str) -> list[dict]:
            return [
                r for r in rows
                if (r["world_size"], r["variant"], r["launch"]) == (ranks, variant, launch)
            ]  # fmt: skip

        groups = [pick("uncached", "launch"), pick("cached", "first launch")]
        groups.append(pick("cached", "relaunch"))
        times = [statistics.median(r["first_step_s"] for r in g) if g else None for g in groups]
        rss = [max(r["peak_rss_mib"] for r in g) if g else None for g in groups]

        def cell(value, fmt=".1f"):
            return "-" if value is None else format(value, fmt)

        def ratio(value):
            return "-" if value is None or times[0] is None else f"{value / times[0]:.3f}"

        lines.append(
            f"| {ranks} | {cell(times[0])} | {cell(times[1])} | {ratio(times[1])} | "
            f"{cell(times[2])} (n={len(groups[2])}) | {ratio(times[2])} | "
            + " / ".join(cell(v, ".0f") for v in rss)
            + " |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data folder (train/valid/test.jsonl)")
    parser.add_argument("--vocab", required=True, help="--vocab of the training command")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--ranks", default="1,2", help="comma-separated numbers of ranks")
    parser.add_argument("--variants", default="uncached,cached")
    parser.add_argument("--relaunches", type=int, default=1, help="cached relaunches per ranks")
    parser.add_argument("--scratch", default=None, help="folder for run folders and caches")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (.md beside it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.variants = args.variants.split(",")
    with open(Path(args.data, "train.jsonl"), "rb") as handle:
        pairs = sum(1 for _ in handle)
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pairs": pairs, "rows": rows, "argv": argv}, indent=1) + "\n")
    lines = markdown(rows, args, pairs)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
