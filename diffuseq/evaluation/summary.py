"""The evaluation summary (``eval_seq2seq.py --summary``): one table across the seed files.

The original prints one block per seed file and leaves the comparison to the reader's eye.
:func:`summarize` reduces the per-file blocks to mean / min / max per metric, adds the MBR
row when MBR ran, and the diversity of the candidate set (self-BLEU, div-4), which the
original prints only without ``--mbr``. Pure: numbers in, a dict and lines out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffuseq.evaluation.job import BlockScores, DiversityScores

__all__ = ["METRICS", "summarize", "summary_lines"]

#: ``(attribute of BlockScores, printed name)`` of the summarised metrics.
METRICS = (
    ("avg_bleu", "BLEU"),
    ("avg_rouge_l", "ROUGE-L"),
    ("bertscore", "BERTScore"),
    ("avg_dist1", "dist-1"),
    ("avg_len", "avg len"),
)


def summarize(
    files: Sequence[BlockScores],
    *,
    mbr: BlockScores | None = None,
    diversity: DiversityScores | None = None,
) -> dict[str, Any]:
    """``{"files": [paths], "metrics": {name: {"mean", "min", "max", "mbr"?}}, "diversity"?}``.

    A metric that was not computed (BERTScore skipped) is left out.
    """
    table: dict[str, dict[str, float]] = {}
    for attr, name in METRICS:
        values = [getattr(block, attr) for block in files]
        if any(v is None for v in values):
            continue
        row = {
            "mean": float(sum(values) / len(values)),
            "min": float(min(values)),
            "max": float(max(values)),
        }
        if mbr is not None and getattr(mbr, attr) is not None:
            row["mbr"] = float(getattr(mbr, attr))
        table[name] = row
    out: dict[str, Any] = {"files": [block.label for block in files], "metrics": table}
    if diversity is not None:
        out["diversity"] = {
            "self_bleu": float(diversity.avg_self_bleu),
            "div4": float(diversity.avg_div4),
        }
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The printed table of :func:`summarize` (fixed-width columns, 4 decimals)."""
    files = summary["files"]
    with_mbr = any("mbr" in row for row in summary["metrics"].values())
    columns = ["mean", "min", "max"] + (["MBR"] if with_mbr else [])
    lines = [
        "*" * 30,
        f"Summary over {len(files)} file(s): {', '.join(files)}",
        f"{'metric':<10}" + "".join(f"{c:>10}" for c in columns),
    ]
    for name, row in summary["metrics"].items():
        cells = [row["mean"], row["min"], row["max"]] + ([row.get("mbr")] if with_mbr else [])
        lines.append(
            f"{name:<10}" + "".join(f"{'-':>10}" if v is None else f"{v:>10.4f}" for v in cells)
        )
    if "diversity" in summary:
        d = summary["diversity"]
        lines.append(
            f"candidate set: selfBleu {d['self_bleu']:.4f}, div4 {d['div4']:.4f} "
            "(lower self-BLEU and higher div-4 = more diverse)"
        )
    return lines
