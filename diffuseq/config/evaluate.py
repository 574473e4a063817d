"""What ``eval_seq2seq.py`` evaluates and how (:class:`EvalConfig`); docs/original.md §2.7, §7.

The original's flags (``--folder``, ``--mbr``, ``--sos/--eos/--sep/--pad``) keep their names and
defaults; the rest are this toolkit's additions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from diffuseq.config.fields import FlagConfig, choice_checks, opt, raise_first
from diffuseq.evaluation.metrics import DEFAULT_BERTSCORE_MODEL

__all__ = ["EvalConfig"]

_INPUTS = "inputs (give exactly one)"
_TOKENS = "(default: the one the folder's decode MANIFEST names, else %s)"


@dataclass(frozen=True)
class EvalConfig(FlagConfig):
    """The evaluation of decode outputs: inputs, text cleaning, BERTScore, extras."""

    folder: str = opt(
        "",
        "folder of decode outputs; every *json file in it (sorted) is one candidate set, line i "
        "of each file is example i",
        group=_INPUTS,
    )
    file: str = opt(
        "", "a single decode output file (JSONL with recover/reference/source)", group=_INPUTS
    )
    hyp: str = opt("", "plain-text hypotheses, one per line (with --ref)", group=_INPUTS)
    ref: str = opt("", "plain-text references, one per line (with --hyp)", group=_INPUTS)
    mbr: bool = opt(
        False,
        "MBR: pick per example the candidate with the highest summed BLEU against the other "
        "files' candidates (needs >1 file)",
    )
    sos: str | None = opt(None, "start token deleted from the texts " + _TOKENS % "[CLS]")
    eos: str | None = opt(None, "end token deleted from the texts " + _TOKENS % "[SEP]")
    sep: str | None = opt(
        None, "separator token deleted from reference/recover " + _TOKENS % "[SEP]"
    )
    pad: str | None = opt(None, "pad token deleted from recover " + _TOKENS % "[PAD]")
    no_bertscore: bool = opt(False, "skip BERTScore (its line says so)", group="BERTScore")
    bertscore_model: str = opt(
        DEFAULT_BERTSCORE_MODEL,
        "hub name (must be in the local Hugging Face cache) or local model folder",
        group="BERTScore",
    )
    bertscore_layer: int | None = opt(
        None,
        "layer whose features are compared (default: bert_score's tuned layer, 40 for the "
        "default model)",
        group="BERTScore",
    )
    bertscore_batch_size: int = opt(64, "BERTScore batch size", group="BERTScore")
    extras: bool = opt(
        False,
        "also print [extra] lines: corpus BLEU (sacrebleu), dist-2, symmetric self-BLEU, MBR "
        "avg len",
        group="additions",
    )
    allow_mixed: bool = opt(
        False,
        "evaluate files of different decode settings together (other checkpoints, samplers, "
        "steps or inputs, as the folder's MANIFEST records them); without it they are refused",
        group="additions",
    )
    summary: bool = opt(
        False,
        "after the original's lines, print one table across the files: mean / min / max per "
        "metric, the MBR row, and the candidate set's self-BLEU and div-4",
        group="additions",
    )
    json: str = opt(
        "",
        "write every number, the printed lines and the MBR-selected outputs to this JSON file "
        "(implies the extras)",
        metavar="OUT",
        group="additions",
    )
    workers: int = opt(
        min(4, os.cpu_count() or 1),
        "processes for the pairwise BLEU of diversity/MBR on large inputs (default min(4, "
        "CPUs); 1 = no pool)",
        group="additions",
    )
    reference_impl: bool = opt(
        False,
        "compute BLEU and ROUGE-L with nltk/torchmetrics directly, as the original (slow; for "
        "cross-checks)",
        group="additions",
    )

    def validate(self) -> EvalConfig:
        """Reject bad values at start-up (the output folder of ``--json`` must exist)."""
        given = [name for name in ("folder", "file", "hyp", "ref") if getattr(self, name)]
        out_folder = os.path.dirname(os.path.abspath(self.json)) if self.json else ""
        raise_first(
            [
                *choice_checks(self),
                (self.workers >= 1, f"--workers must be at least 1 (got {self.workers})"),
                (
                    not self.json or os.path.isdir(out_folder),
                    f"--json {self.json}: the folder for the output file does not exist",
                ),
                (
                    given in (["folder"], ["file"], ["hyp", "ref"]),
                    "give exactly one input: --folder DIR, --file F.json, or --hyp H.txt "
                    f"--ref R.txt (got: {', '.join('--' + g for g in given) or 'none'})",
                ),
                (
                    self.bertscore_batch_size >= 1,
                    f"--bertscore_batch_size must be at least 1 (got {self.bertscore_batch_size})",
                ),
            ]
        )
        return self
