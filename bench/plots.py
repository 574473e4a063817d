"""PNG plots for bench/RESULTS.md from the files the benchmarks write (matplotlib, optional).

Inputs (each optional; a missing one is skipped with a note):
  --train   bench/data/train.json        (bench_train)   -> bench/train_step_time.png
  --model   bench/data/model.json        (bench_model)   -> bench/decode_step_time.png
  --decode  bench/results_decode.md      (bench_decode demo: | sampler | steps | BLEU | ...)
                                                           -> bench/decode_bleu_vs_steps.png
  --metrics bench/data/demo_metrics.jsonl (a demo run's metrics.jsonl) -> bench/demo_loss_curve.png

The files are written to bench/out/plots/ (not committed); pass --outdir bench to replace the
committed plots. For the loss curves of any run, use ``diffuseq-plot RUN``.

    pip install matplotlib   # the optional "plots" extra
    python -m bench.plots --metrics diffusion_models/<demo run>/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from diffuseq.errors import UserError
from diffuseq.training.plots import plot_loss_curves, read_metrics, require_pyplot

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# Scratch output (ignored by git): the committed PNGs are rewritten only with --outdir bench.
DEFAULT_OUTDIR = BENCH / "out" / "plots"


def read_markdown_tables(path: Path) -> list[list[dict[str, str]]]:
    """Every pipe table of a markdown file as a list of ``{header: cell}`` rows."""
    tables, header, rows = [], None, []
    for line in path.read_text().splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif all(set(c) <= set("-: ") for c in cells):
                continue
            else:
                rows.append(dict(zip(header, cells)))
            continue
        if header is not None:
            tables.append(rows)
        header, rows = None, []
    return tables


def _number(text: str) -> float:
    try:
        return float(text.replace("x", "").replace("*", "").strip())
    except ValueError:
        return math.nan


def plot_train(plt, path: Path, out: Path) -> None:
    data = json.loads(path.read_text())
    rows = [r for r in data["summary"] if "error" not in r]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(
        1,
        len(configs),
        figsize=(
            5.5 * len(configs),
            0.6 * max(len([r for r in rows if r["config"] == c]) for c in configs) + 1.8,
        ),
        squeeze=False,
    )
    for ax, config in zip(axes[0], configs):
        mine = [r for r in rows if r["config"] == config]
        names = [r["variant"] for r in mine]
        values = [r["s_per_step"] for r in mine]
        bars = ax.barh(range(len(mine)), values, color="tab:blue")
        for bar, r in zip(bars, mine):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['s_per_step']:.2f} s, {r['peak_rss_gib']:.1f} GiB",
                va="center",
                fontsize=8,
            )
        ref = data.get("reference", {}).get(config)
        if ref:
            ax.axvline(
                ref["s_per_step"],
                color="tab:red",
                linestyle="--",
                label=f"original {ref['s_per_step']} s",
            )
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(range(len(mine)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds per training step (median)")
        ax.set_title(config)
        ax.set_xlim(0, max(values + [ref["s_per_step"] if ref else 0]) * 1.45)
    fig.suptitle("Training step time per variant", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_model(plt, path: Path, out: Path) -> None:
    data = json.loads(path.read_text())
    rows = [r for r in data["summary"] if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.8))
    y = range(len(rows))
    fwd = [r["forward_s"] for r in rows]
    rnd = [r["step_s"] - r["forward_s"] for r in rows]
    ax.barh(y, fwd, color="tab:blue", label="model forward")
    ax.barh(y, rnd, left=fwd, color="tab:orange", label="rounding (+ overhead)")
    ref = data.get("reference", {}).get("v1_ddim_step_s")
    if ref:
        ax.axvline(ref, color="tab:red", linestyle="--", label=f"original v1 step {ref} s")
        ax.axvline(0.6 * ref, color="tab:green", linestyle=":", label="target 0.6x original")
    ax.set_yticks(list(y), [r["variant"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"seconds per denoising step ({rows[0].get('per_sentence_s', 0) and '64 x 128 positions'})"
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Decode step at paper size, per variant", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_decode(plt, path: Path, out: Path) -> None:
    table = next(
        (t for t in read_markdown_tables(path) if t and {"sampler", "steps", "BLEU"} <= set(t[0])),
        None,
    )
    if table is None:
        raise ValueError(f"{path}: no table with sampler / steps / BLEU columns")
    fig, ax = plt.subplots(figsize=(6, 4))
    by_sampler: dict[str, list[tuple[float, float]]] = {}
    for row in table:
        by_sampler.setdefault(row["sampler"], []).append(
            (_number(row["steps"]), _number(row["BLEU"]))
        )
    styles = iter([("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")])
    steps, values = set(), []
    for sampler, points in by_sampler.items():
        points = sorted(p for p in points if not math.isnan(p[0]))
        values += [p[1] for p in points]
        if len(points) == 1:
            ax.axhline(
                points[0][1],
                linestyle="--",
                color="gray",
                label=f"{sampler} ({points[0][0]:g} steps)",
            )
        else:
            marker, line = next(styles, ("o", "-"))
            steps.update(p[0] for p in points)
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker=marker,
                linestyle=line,
                markersize=7 if marker == "o" else 5,
                label=sampler,
            )
    ax.set_xscale("log")
    if steps:
        ax.set_xticks(sorted(steps), [f"{s:g}" for s in sorted(steps)])
        ax.minorticks_off()
    low, high = min(values), max(values)
    pad = max(0.02, (high - low) * 0.2)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high) + pad / 2)
    ax.set_xlabel("denoising steps (model calls)")
    ax.set_ylabel("BLEU")
    ax.set_title("Demo model: BLEU vs number of steps", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_loss(plt, path: Path, out: Path) -> None:
    """The demo run's loss curves, as ``diffuseq-plot`` draws them for any run."""
    title = f"Demo training run ({path.parent.name})"
    plot_loss_curves(plt, read_metrics(path), out, title=title, source=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--train", default=str(BENCH / "data" / "train.json"), help="bench_train JSON"
    )
    parser.add_argument(
        "--model", default=str(BENCH / "data" / "model.json"), help="bench_model JSON"
    )
    parser.add_argument(
        "--decode", default=str(BENCH / "results_decode.md"), help="bench_decode demo table"
    )
    parser.add_argument(
        "--metrics",
        default=str(BENCH / "data" / "demo_metrics.jsonl"),
        help="metrics.jsonl of the demo training run",
    )
    parser.add_argument(
        "--outdir",
        default=str(DEFAULT_OUTDIR),
        help="where the PNG files go (default bench/out/plots; --outdir bench replaces the "
        "committed plots of bench/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    try:
        plt = require_pyplot()
    except UserError as err:
        print(err)
        return 1
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (plot_train, args.train, "train_step_time.png"),
        (plot_model, args.model, "decode_step_time.png"),
        (plot_decode, args.decode, "decode_bleu_vs_steps.png"),
        (plot_loss, args.metrics, "demo_loss_curve.png"),
    ]
    status = 0
    for fn, source, name in jobs:
        if not source or not Path(source).is_file():
            print(f"skipped {name}: input {source or '(none given)'} not found")
            continue
        try:
            fn(plt, Path(source), outdir / name)
            print(f"wrote {outdir / name} from {source}")
        except (KeyError, ValueError, json.JSONDecodeError, UserError) as exc:
            print(f"failed {name} from {source}: {exc}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
