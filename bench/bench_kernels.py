"""Kernel-level benchmark: our nearest-embedding rounding and token cross-entropy against the
original code's algorithms, side by side in one process (interleaved repeats, medians).

* rounding of B·L positions to V embeddings: the original's one-shot ``[V, B·L]`` distance
  matrix with ``topk(−d)`` (``diffuseq/rounding.py`` in the original) vs
  ``diffuseq.sampling.rounding.nearest_tokens`` (cache-sized blocks, fused distance, argmin);
* the token cross-entropy of the vocabulary read-out, forward + backward: full ``[N, V]``
  logits through ``F.cross_entropy`` with autograd (what the original does) vs
  ``diffuseq.diffusion.losses.linear_cross_entropy``, for logits of two spreads (the wider one
  puts many softmax entries below the smallest normal float32).

Both pairs are checked to agree (same tokens; losses and gradients within float32 summation
differences) before anything is printed.

    python -m bench.bench_kernels --repeats 5 --out bench/results_kernels.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffuseq.ops.linear_cross_entropy import linear_cross_entropy
from diffuseq.sampling.rounding import nearest_tokens


def original_rounding(x: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """The original's ``get_efficient_knn`` + top-1: one ``[V, N]`` matrix."""
    emb_norm, arr_norm = (E**2).sum(-1).view(-1, 1), (x**2).sum(-1).view(-1, 1)
    dist = emb_norm + arr_norm.t() - 2.0 * torch.mm(E, x.t())
    dist = torch.clamp(dist, 0.0, float("inf"))
    return torch.topk(-dist, k=1, dim=0).indices[0]


def _loss_and_grads(fn, z, weight, bias, target):
    z, weight, bias = (t.detach().requires_grad_() for t in (z, weight, bias))
    loss = fn(z, weight, bias, target)
    loss.mean().backward()
    return loss.detach(), z.grad, weight.grad, bias.grad


def _full_logits(z, weight, bias, target):
    return F.cross_entropy(F.linear(z, weight, bias), target, reduction="none")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--positions", type=int, default=64 * 128, help="B·L positions / loss rows")
    parser.add_argument("--vocab_size", type=int, default=30522)
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument(
        "--out", default="bench/results_kernels.md", help="markdown table ('' = none)"
    )
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    N, V, h = args.positions, args.vocab_size, args.hidden_dim
    E = torch.randn(V, h, generator=g) * 0.3
    x = E[torch.randint(0, V, (N,), generator=g)] + 0.1 * torch.randn(N, h, generator=g)
    target = torch.randint(0, V, (N,), generator=g)
    bias = torch.zeros(V)
    z_by_spread = {s: torch.randn(N, h, generator=g) * s for s in (1.0, 3.0)}

    assert torch.equal(nearest_tokens(x, E), original_rounding(x, E)), "rounding differs"
    for z in z_by_spread.values():
        for got, want in zip(
            _loss_and_grads(linear_cross_entropy, z, E, bias, target),
            _loss_and_grads(_full_logits, z, E, bias, target),
        ):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    cases = {("rounding", "-"): (lambda: original_rounding(x, E), lambda: nearest_tokens(x, E))}
    for spread, z in z_by_spread.items():
        cases[("token cross-entropy, forward + backward", f"z ~ N(0, {spread:g}²)")] = (
            lambda z=z: _loss_and_grads(_full_logits, z, E, bias, target),
            lambda z=z: _loss_and_grads(linear_cross_entropy, z, E, bias, target),
        )
    times = {key: ([], []) for key in cases}
    for _ in range(args.repeats):
        for key, (original, ours) in cases.items():
            times[key][0].append(_timed(original))
            times[key][1].append(_timed(ours))

    lines = [
        "# Kernel benchmark: rounding and token cross-entropy vs the original's algorithms",
        "",
        f"Command: `python -m bench.bench_kernels {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"{N} positions, V = {V}, h = {h}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} interleaved repeats, seconds. Outputs agree (same tokens; losses "
        "and gradients within float32 summation differences), checked before timing.",
        "",
        "| kernel | inputs | original algorithm s | ours s | speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    for (kernel, inputs), (orig, ours) in times.items():
        o, u = statistics.median(orig), statistics.median(ours)
        lines.append(f"| {kernel} | {inputs} | {o:.3f} | {u:.3f} | {o / u:.2f}x |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
