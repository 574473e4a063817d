"""Benchmark of the evaluator (docs/original.md §7): fast metrics vs the original nltk/torchmetrics loop.

Builds realistic decode outputs in a temporary folder from QQP validation pairs (reference =
``trg``; recover = ``trg`` with deterministic word drops/swaps/repeats, wrapped in
``[CLS] ... [SEP] [PAD]...`` like decoder output; the 2047 pairs are cycled to ``--lines``), then
times, with medians over ``--repeats``:

1. one file: BLEU, ROUGE-L, dist-1, avg len (no BERTScore), fast vs reference implementation;
   and the whole ``eval_seq2seq.py --file F --no_bertscore`` command (interpreter start included);
2. MBR over ``--candidates`` files: pairwise BLEU + selection, fast (1 process and ``--workers``)
   vs the original's O(K^2) nltk loop timed on ``--mbr_subset`` sources and extrapolated.

Every fast number is checked against the reference before it is reported. Run from the repo root
(as a module, so that the ``diffuseq`` package of the checkout is imported):

    python -m bench.bench_eval --data ../shared/data/qqp/valid.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diffuseq.evaluation import job as evaluation
from diffuseq.evaluation import metrics

REPO = Path(__file__).resolve().parents[1]


def perturb(words: list[str], rng: random.Random) -> list[str]:
    """Deterministic decoder-like noise: drop, swap and repeat words."""
    out = [w for w in words if rng.random() > 0.15] or words[:1]
    for _ in range(rng.randint(0, 2)):
        if len(out) > 1:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    if out and rng.random() < 0.2:
        out.insert(rng.randrange(len(out)), rng.choice(out))
    return out


def write_decode_files(
    pairs: list[dict], folder: Path, *, lines: int, candidates: int
) -> list[str]:
    """Write ``candidates`` files ``seed1xx_step0.json`` of ``lines`` lines each (pairs cycled)."""
    paths = []
    for k in range(candidates):
        path = folder / f"seed{101 + k}_step0.json"
        with path.open("w") as handle:
            for i in range(lines):
                pair = pairs[i % len(pairs)]
                rng = random.Random(1000 * k + i)
                trg, src = pair["trg"].lower().split(), pair["src"].lower().split()
                pads = " [PAD]" * rng.randint(0, 3)
                record = {
                    "recover": f"[CLS] {' '.join(perturb(trg, rng))} [SEP]{pads}",
                    "reference": f"[CLS] {' '.join(trg)} [SEP]",
                    "source": f"[CLS] {' '.join(src)} [SEP] [SEP]",
                }
                handle.write(json.dumps(record) + "\n")
        paths.append(str(path))
    return paths


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def file_metrics(path: str, reference_impl: bool) -> evaluation.BlockScores:
    """Read one decode file; BLEU, ROUGE-L, dist-1 and len per line (the original's file loop)."""
    f = evaluation.read_decode_file(path)
    return evaluation.score_block(path, f.examples, reference_impl=reference_impl)


def original_mbr(groups: list[list[str]]) -> list[int]:
    """The original ``selectBest``: all K^2 nltk calls (diagonal included, then zeroed)."""
    chosen = []
    for cands in groups:
        matrix = [[metrics.reference_sentence_bleu(a, b) for b in cands] for a in cands]
        for i in range(len(cands)):
            matrix[i][i] = 0
        chosen.append(metrics.mbr_select(matrix))
    return chosen


def bench_one_file(path: str, args: argparse.Namespace) -> tuple[list[tuple], float]:
    """Rows for one file (in-process and whole CLI); also returns the reference median."""
    metrics.rouge_l_many(["a b"], ["a c"], reference_impl=True)  # import torch before timing
    fast_t, fast = median_time(lambda: file_metrics(path, False), args.repeats)
    ref_t, ref = median_time(lambda: file_metrics(path, True), args.reference_repeats)
    fast_numbers = (fast.bleu, fast.rouge_l, fast.avg_bleu, fast.avg_rouge_l, fast.avg_dist1)
    assert fast_numbers == (ref.bleu, ref.rouge_l, ref.avg_bleu, ref.avg_rouge_l, ref.avg_dist1)
    cli_t = time_cli(["--file", path], args.repeats)
    task = f"one file, {args.lines} lines: BLEU, ROUGE-L, dist-1, len"
    return [
        (task + " (in-process)", ref_t, fast_t, "measured"),
        (task + ", whole CLI run", ref_t, cli_t, "fast: `eval_seq2seq.py --file F --no_bertscore`"),
    ], ref_t


def time_cli(flags: list[str], repeats: int) -> float:
    """Median wall time of ``eval_seq2seq.py <flags> --no_bertscore`` (with interpreter start)."""
    cmd = [sys.executable, str(REPO / "eval_seq2seq.py"), *flags, "--no_bertscore"]
    return median_time(lambda: subprocess.run(cmd, check=True, capture_output=True), repeats)[0]


def bench_mbr(paths: list[str], folder: str, file_ref_t: float, args: argparse.Namespace) -> list:
    """Rows for MBR: pairwise BLEU + selection (1 process, pool), and the whole --mbr CLI run."""
    files = [evaluation.read_decode_file(p) for p in paths]
    groups = [list(g) for g in zip(*(f.hypotheses for f in files), strict=True)]

    def mbr(workers: int) -> list[int]:
        return [
            metrics.mbr_select(m) for m in evaluation.pairwise_matrices(groups, workers=workers)
        ]

    one_t, chosen = median_time(lambda: mbr(1), args.repeats)
    pool_t, chosen_pool = median_time(lambda: mbr(args.workers), args.repeats)
    sub = groups[: args.mbr_subset]
    sub_t, chosen_ref = median_time(lambda: original_mbr(sub), args.reference_repeats)
    assert chosen == chosen_pool and chosen[: len(sub)] == chosen_ref, "MBR selections differ"
    ref_t = sub_t * len(groups) / len(sub)
    cli_t = time_cli(["--folder", folder, "--mbr", "--workers", str(args.workers)], args.repeats)
    task = f"MBR over {len(paths)}x{args.lines}"
    note = f"reference: original K^2 nltk loop on {len(sub)} sources x {len(groups) / len(sub):g}"
    return [
        (f"{task}: pairwise BLEU + selection, 1 process", ref_t, one_t, note),
        (f"{task}: same, {args.workers} worker processes", ref_t, pool_t, note),
        (
            f"{task}: whole CLI run (every file's metrics + MBR)",
            ref_t + len(paths) * file_ref_t,
            cli_t,
            "reference = MBR above + the one-file reference per file",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared/data/qqp/valid.jsonl"),
        help="QQP jsonl with src/trg (read only, never copied into the repo)",
    )
    parser.add_argument("--lines", type=int, default=2500, help="lines per decode file")
    parser.add_argument("--candidates", type=int, default=10, help="decode files for MBR")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument(
        "--reference_repeats", type=int, default=3, help="repeats of the slow reference"
    )
    parser.add_argument(
        "--mbr_subset", type=int, default=100, help="sources for the original MBR loop"
    )
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="pool size"
    )
    args = parser.parse_args()
    pairs = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_decode_files(pairs, Path(tmp), lines=args.lines, candidates=args.candidates)
        rows, file_ref_t = bench_one_file(paths[0], args)
        rows += bench_mbr(paths, tmp, file_ref_t, args)
    print(f"command: python -m bench.bench_eval {' '.join(sys.argv[1:])}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"numpy {np.__version__}; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(
        f"medians over {args.repeats} (fast) / {args.reference_repeats} (reference) runs, seconds\n"
    )
    print("| task | reference (s) | fast (s) | speed-up | note |")
    print("|---|---:|---:|---:|---|")
    for task, ref_s, fast_s, note in rows:
        print(f"| {task} | {ref_s:.2f} | {fast_s:.3f} | {ref_s / fast_s:.0f}x | {note} |")


if __name__ == "__main__":
    main()
