"""Plot the loss curves of a training run: ``diffuseq-plot RUN`` (or ``python -m diffuseq.cli.plot``).

Examples::

    diffuseq-plot diffusion_models/<run>                  # writes diffusion_models/<run>/loss.png
    diffuseq-plot diffusion_models/<run> --out my.png
    diffuseq-plot path/to/metrics.jsonl                   # writes path/to/loss.png

Reads the run's ``metrics.jsonl``: ``loss``, ``eval_loss``, ``mse``, ``nll`` and the
per-quartile-of-t losses ``loss_q0`` … ``loss_q3`` (and ``eval_loss_q*``). Needs matplotlib
(``pip install -e '.[plots]'``). Writes only the one PNG file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from diffuseq.cli.common import program_name, run_cli
from diffuseq.errors import ConfigError

PROG = program_name("diffuseq-plot", "diffuseq.cli.plot", "diffuseq-plot")
METRICS = "metrics.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help=f"a run folder (holding {METRICS}) or a {METRICS} file")
    parser.add_argument(
        "--out", default="", help="PNG file to write (default: loss.png next to metrics.jsonl)"
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    run = Path(args.run)
    metrics = run / METRICS if run.is_dir() else run
    if not metrics.is_file():
        what = "holds no" if run.is_dir() else "is neither a run folder nor a"
        raise ConfigError(f"{run} {what} {METRICS} (written by run_train.py as it trains)")
    out = Path(args.out) if args.out else metrics.parent / "loss.png"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a .png file name (e.g. {out}/loss.png)")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: give a .png file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    from diffuseq.training.plots import plot_loss_curves, read_metrics, require_pyplot

    records = read_metrics(metrics)  # a malformed file fails before matplotlib is needed
    plt = require_pyplot()
    keys = plot_loss_curves(plt, records, out, title=str(metrics.parent), source=str(metrics))
    print(f"wrote {out} ({', '.join(keys)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``diffuseq-plot``; user errors exit with status 2 and one paragraph."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
