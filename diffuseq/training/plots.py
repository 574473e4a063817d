"""Loss curves of a training run from its ``metrics.jsonl`` (matplotlib, the optional
``plots`` extra), used by ``diffuseq-plot`` (:mod:`diffuseq.cli.plot`) and ``bench/plots.py``.

Each line of ``metrics.jsonl`` is one log interval (:class:`diffuseq.runtime.logger.MetricsWriter`):
``step``, ``loss``/``mse``/``nll`` and their per-quartile-of-t means ``loss_q0`` … ``loss_q3``
(``q0``: the smallest t), and on evaluation intervals ``eval_loss`` and ``eval_loss_q*``.
With ``--eval_decode_interval``, records with ``decode_bleu``, ``decode_rouge_l``,
``decode_exact`` and ``seconds`` add a panel of these scores against steps and one of BLEU
against seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffuseq.errors import ConfigError, DataError

__all__ = ["plot_loss_curves", "read_metrics", "require_pyplot"]

#: (key, matplotlib format) of the main panel.
MAIN_CURVES = (("loss", "-"), ("eval_loss", "o--"), ("mse", ":"), ("nll", "-."))
#: (key, format) of the quality panel (``--eval_decode_interval``).
QUALITY_CURVES = (("decode_bleu", "o-"), ("decode_rouge_l", "s--"), ("decode_exact", "^:"))


def require_pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only).

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install -e '.[plots]')"
        ) from None
    return plt


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (blank lines skipped).

    Raises:
        DataError: a line is not a JSON object (names the line).
    """
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(str(path), line, None, "not UTF-8 text (not a metrics.jsonl)") from None
    except OSError as err:
        raise DataError(str(path), None, None, f"cannot read it ({err.strerror})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(str(path), number, None, f"not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(str(path), number, None, "expected a JSON object")
        for key in ("step", "seconds"):  # the x axes
            value = record.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(str(path), number, key, f"{value!r} is not a number")
            if not math.isfinite(value):
                raise DataError(str(path), number, key, f"{value!r} is not a finite number")
        records.append(record)
    return records


def _points(
    records: list[dict[str, Any]], key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    pairs = [
        (float(r[x]), float(r[key]))
        for r in records
        if x in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_loss_curves(
    plt: Any, records: list[dict[str, Any]], out: str | Path, *, title: str, source: str = ""
) -> list[str]:
    """Write a PNG with the loss curves to ``out``; returns the keys plotted.

    Left panel: ``loss``, ``eval_loss``, ``mse``, ``nll`` (log scale); right panel (when the
    records have them): ``loss_q0`` … ``loss_q3`` and, dashed, ``eval_loss_q0`` … ``_q3``.

    Raises:
        DataError: no record has a ``step`` and a ``loss`` or ``eval_loss``.
    """
    quartiles = [f"{p}loss_q{q}" for p in ("", "eval_") for q in range(4)]
    have = [k for k, _ in MAIN_CURVES if _points(records, k)[0]]
    have_q = [k for k in quartiles if _points(records, k)[0]]
    have_d = [k for k, _ in QUALITY_CURVES if _points(records, k)[0]]
    seconds = bool(_points(records, "decode_bleu", "seconds")[0])
    if not {"loss", "eval_loss"} & set(have):
        raise DataError(source or "metrics", None, None, "no record with a step and a loss to plot")
    panels = 1 + bool(have_q) + bool(have_d) + seconds
    fig, axes = plt.subplots(1, panels, figsize=(1 + 5 * panels, 4))
    axes = list(axes) if panels > 1 else [axes]
    if have_d:
        _plot_quality(axes[1 + bool(have_q) :], records, have_d, seconds)
    for key, style in MAIN_CURVES:
        if key in have:
            axes[0].plot(*_points(records, key), style, label=key, markersize=4)
    axes[0].set_ylabel("loss (mean over the logging interval)")
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for key in have_q:
        q = int(key[-1])
        style = "o--" if key.startswith("eval_") else "-"
        axes[1].plot(*_points(records, key), style, color=colors[q], label=key, markersize=3)
    if have_q:
        axes[1].set_title("per quartile of t (q0: smallest t)", fontsize=9)
    for ax in axes[: 1 + bool(have_q)]:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return have + have_q + have_d


def _plot_quality(
    axes: list, records: list[dict[str, Any]], keys: list[str], seconds: bool
) -> None:
    """``--eval_decode_interval``'s scores against steps, and BLEU against seconds."""
    for key, style in QUALITY_CURVES:
        if key in keys:
            axes[0].plot(*_points(records, key), style, label=key, markersize=4)
    axes[0].set_xlabel("step")
    axes[0].set_title("decoded validation sources", fontsize=9)
    if seconds:
        axes[1].plot(*_points(records, "decode_bleu", "seconds"), "o-", label="decode_bleu")
        axes[1].set_xlabel("seconds of training")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
