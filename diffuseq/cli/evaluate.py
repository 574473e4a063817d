"""Evaluate decode outputs like the original ``scripts/eval_seq2seq.py`` (docs/original.md §2.7, §7).

Examples::

    python eval_seq2seq.py --folder generation_outputs/<run>/ema_0.9999_050000.pt.samples
    python eval_seq2seq.py --folder <samples folder> --mbr          # MBR over the seed files
    python eval_seq2seq.py --file seed101_step2000.json --no_bertscore
    python eval_seq2seq.py --hyp hyp.txt --ref ref.txt \\
        --bertscore_model ./roberta-large --bertscore_layer 17

Without extra flags the printed lines are the original's. A folder written by run_decode.py
holds a MANIFEST: its files must come from one decode setting (same checkpoint weights, sampler,
steps, inputs, ...; seeds may differ, as with run_decode.sh once per seed); files of several
settings are refused (``--allow_mixed`` evaluates them together anyway), and stderr says which
files, seeds and settings are combined. BERTScore needs its model locally
(``microsoft/deberta-xlarge-mnli``, layer 40, by default); if it is not in the Hugging Face cache
the evaluator says so on stderr and prints every other metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from diffuseq.cli.common import describe, program_name, run_cli
from diffuseq.cli.flags import build_parser as build_flag_parser
from diffuseq.cli.flags import config_from_args
from diffuseq.config import EvalConfig
from diffuseq.decoding import decode_sets
from diffuseq.errors import ConfigError, OfflineAssetError
from diffuseq.evaluation import job as evaluation
from diffuseq.evaluation import metrics

PROG = program_name("eval_seq2seq.py", "diffuseq.cli.evaluate", "diffuseq-eval")


def build_parser() -> argparse.ArgumentParser:
    """The flags of :class:`~diffuseq.config.EvalConfig`."""
    return build_flag_parser(
        PROG, describe(__doc__, "eval_seq2seq.py", PROG), [(EvalConfig, "evaluation")]
    )


def parse_args(argv: Sequence[str] | None) -> EvalConfig:
    """The validated config of a command line."""
    return config_from_args(build_parser().parse_args(argv), EvalConfig).validate()


def load_inputs(config: EvalConfig, combined: list | None = None) -> list[evaluation.CandidateFile]:
    """The candidate files named by ``--folder``, ``--file`` or ``--hyp/--ref``.

    Files of several decode settings are refused unless ``--allow_mixed``
    (:mod:`diffuseq.decoding.decode_sets`); what is combined is said on stderr and appended to
    ``combined`` (the ``--json`` record)."""
    flags = {name: getattr(config, name) for name in ("sos", "eos", "sep", "pad")}
    tokens = evaluation.special_tokens_for(config.folder or config.file, flags)
    if config.hyp:
        return [evaluation.read_text_pair(config.hyp, config.ref, tokens)]
    paths = evaluation.find_decode_files(config.folder) if config.folder else [config.file]
    files = [evaluation.read_decode_file(path, tokens) for path in paths]
    report_sets(config.folder or os.path.dirname(config.file) or ".", paths, config, combined)
    return files


def report_sets(folder: str, paths: Sequence[str], config: EvalConfig, combined) -> None:
    """Refuse files of different decode settings (unless ``--allow_mixed``); say on stderr
    which files, seeds and settings are combined."""
    sets = decode_sets.group_files(folder, paths)
    if sets is None:  # the original's outputs: nothing is known (nor said) about them
        return
    if not config.allow_mixed:
        decode_sets.check_one_set(folder, sets, flag="--allow_mixed")
    what = "one decode setting" if len(sets) == 1 else f"{len(sets)} settings (--allow_mixed)"
    print(f"{PROG}: evaluating {len(paths)} file(s) of {what} in {folder}:", file=sys.stderr)
    for group in sets:
        print(f"  {decode_sets.describe(group)}", file=sys.stderr)
    if combined is not None:
        combined.extend(group.to_json() for group in sets)


def make_bertscore(config: EvalConfig) -> tuple[evaluation.BertScoreFn | None, str]:
    """The BERTScore function, or ``None`` and the text printed in its place.

    An explicitly chosen model that cannot be loaded is an error; the default model missing
    offline is reported in one line on stderr and the other metrics are still computed.
    """
    if config.no_bertscore:
        return None, "skipped (--no_bertscore)"
    try:
        scorer = metrics.BertScorer(
            model=config.bertscore_model,
            layer=config.bertscore_layer,
            batch_size=config.bertscore_batch_size,
        )
    except OfflineAssetError as err:
        if config.bertscore_model != metrics.DEFAULT_BERTSCORE_MODEL:
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
    config = parse_args(argv)
    combined: list = []
    files = load_inputs(config, combined)
    if config.mbr and len(files) < 2:
        print(
            f"{PROG}: note: --mbr needs more than one file; only per-file metrics are printed",
            file=sys.stderr,
        )
    bertscore, status = make_bertscore(config)
    report = evaluation.evaluate(
        files,
        mbr=config.mbr,
        reference_impl=config.reference_impl,
        extras=config.extras or bool(config.json),
        show_extras=config.extras,
        workers=config.workers,
        bertscore=bertscore,
        bertscore_status=status,
        summary=config.summary,
    )
    if config.json:
        payload = {
            "command": [PROG, *(argv if argv is not None else sys.argv[1:])],
            "versions": versions(),
            "options": config.to_dict(),
            "decode_sets": combined,
            **report.to_json(),
        }
        try:
            with open(config.json, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
        except OSError as err:
            raise ConfigError(f"--json {config.json}: cannot write ({err.strerror})") from err
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (2 with a one-paragraph message on user errors)."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
