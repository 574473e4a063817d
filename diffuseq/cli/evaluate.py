"""Evaluate decode outputs like the original ``scripts/eval_seq2seq.py`` (docs/original.md §2.7, §7).

Examples::

    python eval_seq2seq.py --folder generation_outputs/<run>/ema_0.9999_050000.pt.samples
    python eval_seq2seq.py --folder <samples folder> --mbr          # MBR over the seed files
    python eval_seq2seq.py --file seed101_step2000.json --no_bertscore
    python eval_seq2seq.py --hyp hyp.txt --ref ref.txt \\
        --bertscore_model ./roberta-large --bertscore_layer 17

Without extra flags the printed lines are the original's. BERTScore needs its model locally
(``microsoft/deberta-xlarge-mnli``, layer 40, by default); if it is not in the Hugging Face cache
the evaluator says so on stderr and prints every other metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from diffuseq import evaluation, metrics
from diffuseq.cli.common import program_name, run_cli
from diffuseq.errors import ConfigError, OfflineAssetError

PROG = program_name("eval_seq2seq.py", "diffuseq.cli.evaluate", "diffuseq-eval")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (original flags first, then this toolkit's additions)."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("inputs (give exactly one)")
    src.add_argument(
        "--folder",
        default="",
        help="folder of decode outputs; every *json file in "
        "it (sorted) is one candidate set, line i of each file is example i",
    )
    src.add_argument(
        "--file",
        default="",
        help="a single decode output file (JSONL with recover/reference/source)",
    )
    src.add_argument("--hyp", default="", help="plain-text hypotheses, one per line (with --ref)")
    src.add_argument("--ref", default="", help="plain-text references, one per line (with --hyp)")
    p.add_argument(
        "--mbr",
        action="store_true",
        help="MBR: pick per example the candidate with "
        "the highest summed BLEU against the other files' candidates (needs >1 file)",
    )
    tokens = "(default: the one the folder's decode MANIFEST names, else %s)"
    p.add_argument("--sos", help="start token deleted from the texts " + tokens % "[CLS]")
    p.add_argument("--eos", help="end token deleted from the texts " + tokens % "[SEP]")
    p.add_argument(
        "--sep", help="separator token deleted from reference/recover " + tokens % "[SEP]"
    )
    p.add_argument("--pad", help="pad token deleted from recover " + tokens % "[PAD]")
    bs = p.add_argument_group("BERTScore")
    bs.add_argument("--no_bertscore", action="store_true", help="skip BERTScore (its line says so)")
    bs.add_argument(
        "--bertscore_model",
        default=metrics.DEFAULT_BERTSCORE_MODEL,
        help="hub name (must be in the local Hugging Face cache) or local model folder",
    )
    bs.add_argument(
        "--bertscore_layer",
        type=int,
        default=None,
        help="layer whose features are "
        "compared (default: bert_score's tuned layer, 40 for the default model)",
    )
    bs.add_argument("--bertscore_batch_size", type=int, default=64, help="BERTScore batch size")
    ex = p.add_argument_group("additions")
    ex.add_argument(
        "--extras",
        action="store_true",
        help="also print [extra] lines: corpus BLEU "
        "(sacrebleu), dist-2, symmetric self-BLEU, MBR avg len",
    )
    ex.add_argument(
        "--json",
        default="",
        metavar="OUT",
        help="write every number, the printed "
        "lines and the MBR-selected outputs to this JSON file (implies the extras)",
    )
    ex.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for the pairwise BLEU of diversity/MBR on large inputs "
        "(default min(4, CPUs); 1 = no pool)",
    )
    ex.add_argument(
        "--reference_impl",
        action="store_true",
        help="compute BLEU and ROUGE-L with "
        "nltk/torchmetrics directly, as the original (slow; for cross-checks)",
    )
    return p


def load_inputs(args: argparse.Namespace) -> list[evaluation.CandidateFile]:
    """The candidate files named by ``--folder``, ``--file`` or ``--hyp/--ref``."""
    given = [name for name in ("folder", "file", "hyp", "ref") if getattr(args, name)]
    if given not in (["folder"], ["file"], ["hyp", "ref"]):
        raise ConfigError(
            "give exactly one input: --folder DIR, --file F.json, or --hyp H.txt "
            f"--ref R.txt (got: {', '.join('--' + g for g in given) or 'none'})"
        )
    flags = {name: getattr(args, name) for name in ("sos", "eos", "sep", "pad")}
    tokens = evaluation.special_tokens_for(args.folder or args.file, flags)
    if args.hyp:
        return [evaluation.read_text_pair(args.hyp, args.ref, tokens)]
    paths = evaluation.find_decode_files(args.folder) if args.folder else [args.file]
    return [evaluation.read_decode_file(path, tokens) for path in paths]


def make_bertscore(args: argparse.Namespace) -> tuple[evaluation.BertScoreFn | None, str]:
    """The BERTScore function, or ``None`` and the text printed in its place.

    An explicitly chosen model that cannot be loaded is an error; the default model missing
    offline is reported in one line on stderr and the other metrics are still computed.
    """
    if args.no_bertscore:
        return None, "skipped (--no_bertscore)"
    try:
        scorer = metrics.BertScorer(
            model=args.bertscore_model,
            layer=args.bertscore_layer,
            batch_size=args.bertscore_batch_size,
        )
    except OfflineAssetError as err:
        if args.bertscore_model != metrics.DEFAULT_BERTSCORE_MODEL:
            raise
        print(
            f"{PROG}: warning: {err} BERTScore is skipped; the other metrics follow.",
            file=sys.stderr,
        )
        return None, "unavailable (model not available offline)"
    return scorer, ""


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("nltk", "torchmetrics", "numpy", "sacrebleu", "bert_score", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ConfigError(f"--json {args.json}: the folder for the output file does not exist")
    files = load_inputs(args)
    if args.mbr and len(files) < 2:
        print(
            f"{PROG}: note: --mbr needs more than one file; only per-file metrics are printed",
            file=sys.stderr,
        )
    bertscore, status = make_bertscore(args)
    report = evaluation.evaluate(
        files,
        mbr=args.mbr,
        reference_impl=args.reference_impl,
        extras=args.extras or bool(args.json),
        show_extras=args.extras,
        workers=args.workers,
        bertscore=bertscore,
        bertscore_status=status,
    )
    if args.json:
        payload = {
            "command": [PROG, *(argv if argv is not None else sys.argv[1:])],
            "versions": versions(),
            "options": vars(args),
            **report.to_json(),
        }
        try:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
        except OSError as err:
            raise ConfigError(f"--json {args.json}: cannot write ({err.strerror})") from err
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (2 with a one-paragraph message on user errors)."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
