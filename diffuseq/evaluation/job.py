"""Evaluation of decode outputs: the original ``scripts/eval_seq2seq.py`` (docs/original.md §7, §2.7).

Reads decode outputs (a folder of ``*json`` JSONL files with ``recover``/``reference``/``source``,
one such file, or plain-text hypothesis/reference files), validates them, cleans the texts
(docs/original.md §7.1), scores every file (§7.2), then either the diversity of the candidate sets or MBR
selection over them (§7.3, line ``i`` of every file is one example), and prints the report line
for line as the original does (§7.4). Everything is also returned as an :class:`EvalReport`.

Known quirks kept on purpose (docs/original.md §10.1 items 13 and 23): texts are not cut at ``[SEP]``,
``avg len`` counts empty strings, the MBR block prints ``ROUGE-l`` and no ``avg len``.
Deviations: files of different lengths are an error (the original leaves gaps or crashes), and
BERTScore can be skipped or pointed at a local model; its line then says so. A folder written by
our decoder holds a ``MANIFEST`` (:mod:`diffuseq.decoding.manifest`): its files must match it (an
incomplete or unlisted file is an error), and its special tokens are the default ``--sos/--eos/
--sep/--pad``. A folder without one (the original's outputs) is read as the original reads it.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from multiprocessing import get_context

import numpy as np

from diffuseq.data.jsonl import iter_records
from diffuseq.decoding.manifest import check_folder, read_manifest
from diffuseq.errors import DataError
from diffuseq.evaluation import metrics
from diffuseq.evaluation.summary import summarize, summary_lines

STARS = "*" * 30
FIELDS = ("recover", "reference", "source")
POOL_MIN_PAIRS = 20_000  # below this many candidate pairs a process pool costs more than it saves
BertScoreFn = Callable[[Sequence[str], Sequence[str]], tuple[float, str]]


@dataclass(frozen=True)
class SpecialTokens:
    """Strings deleted from the texts (flags ``--sos --eos --sep --pad``)."""

    sos: str = "[CLS]"
    eos: str = "[SEP]"
    sep: str = "[SEP]"
    pad: str = "[PAD]"


@dataclass(frozen=True)
class Example:
    """One cleaned line of a decode file."""

    recover: str
    reference: str
    source: str


@dataclass(frozen=True)
class CandidateFile:
    """One decode output: ``path`` as printed, and its cleaned examples in line order."""

    path: str
    examples: tuple[Example, ...]

    @property
    def hypotheses(self) -> list[str]:
        """The cleaned ``recover`` texts in line order."""
        return [e.recover for e in self.examples]


@dataclass(frozen=True)
class BlockScores:
    """The metrics of one set of outputs against the references (a file, or the MBR choices)."""

    label: str
    bleu: list[float]
    rouge_l: list[float]
    dist1: list[float]
    lengths: list[int]
    avg_bleu: float
    avg_rouge_l: float
    avg_dist1: float
    avg_len: float
    bertscore: float | None = None
    bertscore_text: str = "skipped"
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DiversityScores:
    """Per-line self-BLEU (original, asymmetric), div-4 and their means (docs/original.md §7.3)."""

    self_bleu: list[float]
    div4: list[float]
    avg_self_bleu: float
    avg_div4: float
    extras: dict[str, float] = field(default_factory=dict)
    self_bleu_symmetric: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class MbrResult:
    """MBR choice per line (index into the sorted files), the chosen outputs and their scores."""

    selected_file_index: list[int]
    examples: list[Example]
    scores: BlockScores


@dataclass(frozen=True)
class EvalReport:
    """Everything the evaluation computed; ``lines`` is exactly what was printed to stdout."""

    files: list[BlockScores]
    diversity: DiversityScores | None
    mbr: MbrResult | None
    lines: list[str]
    summary: dict | None = None

    def to_json(self) -> dict:
        """A JSON-serialisable dict of every number and the MBR-selected outputs."""
        return json.loads(json.dumps(asdict(self), default=float))


# ----------------------------------------------------------------------------- reading


def clean_example(record: dict, tokens: SpecialTokens) -> Example:
    """Spec §7.1: strip, then delete eos, sos (source), + sep (reference), + pad (recover)."""
    t = tokens
    return Example(
        recover=metrics.clean_text(record["recover"], remove=(t.eos, t.sos, t.sep, t.pad)),
        reference=metrics.clean_text(record["reference"], remove=(t.eos, t.sos, t.sep)),
        source=metrics.clean_text(record["source"], remove=(t.eos, t.sos)),
    )


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a leading BOM is not text
            lines = handle.read().splitlines()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read the file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise DataError(path, None, None, f"not UTF-8 ({err.reason}, byte {err.start})") from err
    if not lines:
        raise DataError(path, None, None, "the file is empty; expected one example per line")
    return lines


def read_decode_file(path: str, tokens: SpecialTokens = SpecialTokens()) -> CandidateFile:
    """Read and clean one decode output (JSONL with ``recover``, ``reference``, ``source``).

    Raises:
        DataError: as :func:`diffuseq.data.jsonl.iter_records` (file, line and key named); the
            file differs from its entry in the decode manifest of its folder.
    """
    if os.path.isfile(path):
        check_folder(os.path.dirname(path) or ".", [path], whole=False)
    examples = tuple(clean_example(record, tokens) for _, record in iter_records(path, FIELDS))
    return CandidateFile(path=path, examples=examples)


def find_decode_files(folder: str) -> list[str]:
    """The original's file list ``sorted(glob(f"{folder}/*json"))``; an error if there is none.

    A folder with a decode manifest (written by our decoder) must match it: every file listed,
    complete (line count and size) and none missing. A folder without one (the original's
    outputs) is taken as it is.

    Raises:
        DataError: not a folder, no ``*json`` file, or files that do not match the manifest.
    """
    if os.path.isfile(folder):
        raise DataError(folder, None, None, "is a file, not a folder; pass it with --file")
    if not os.path.isdir(folder):
        raise DataError(
            folder, None, None, "no such folder; --folder needs the decode output folder"
        )
    files = sorted(glob.glob(f"{glob.escape(folder)}/*json"))
    if not files:
        inside = sorted(glob.glob(f"{glob.escape(folder)}/**/*.samples*/", recursive=True))
        hint = (
            "; it holds the samples folder(s) "
            + ", ".join(p.rstrip("/") for p in inside[:10])
            + (f" and {len(inside) - 10} more" if len(inside) > 10 else "")
            + ": pass one of them to --folder"
            if inside
            else ""
        )
        raise DataError(
            folder, None, None, f"no *json files in it (decode outputs seed*.json){hint}"
        )
    check_folder(folder, files)
    return files


def special_tokens_for(source: str, given: dict[str, str | None] | None = None) -> SpecialTokens:
    """The tokens to delete: explicit values in ``given`` (``--sos/--eos/--sep/--pad``), else
    those the decode manifest next to ``source`` (a folder, or a file in one) names, else the
    original's ``[CLS] [SEP] [SEP] [PAD]``."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    folder = source if os.path.isdir(source) else os.path.dirname(source) or "."
    manifest = read_manifest(folder) if source else None
    saved = (manifest or {}).get("special_tokens") or {}
    names = {f.name for f in fields(SpecialTokens)}
    from_manifest = {k: v for k, v in saved.items() if k in names and isinstance(v, str)}
    return replace(SpecialTokens(), **{**from_manifest, **given})


def read_text_pair(
    hyp_path: str, ref_path: str, tokens: SpecialTokens = SpecialTokens()
) -> CandidateFile:
    """Plain-text hypotheses and references, one per line (same count), cleaned like decodes."""
    hyps, refs = _read_lines(hyp_path), _read_lines(ref_path)
    if len(hyps) != len(refs):
        short, n = (hyp_path, len(hyps)) if len(hyps) < len(refs) else (ref_path, len(refs))
        problem = f"line missing: {hyp_path} has {len(hyps)} lines, {ref_path} has {len(refs)}"
        raise DataError(short, n + 1, None, problem)
    pairs = zip(hyps, refs, strict=True)
    records = ({"recover": h, "reference": r, "source": ""} for h, r in pairs)
    return CandidateFile(path=hyp_path, examples=tuple(clean_example(r, tokens) for r in records))


def check_same_length(files: Sequence[CandidateFile]) -> None:
    """Every candidate file must have one line per example, like the first file."""
    expected = len(files[0].examples)
    for f in files[1:]:
        if len(f.examples) != expected:
            problem = (
                f"has {len(f.examples)} lines but {files[0].path} has {expected}; "
                "line i of every file must be the same example"
            )
            raise DataError(f.path, min(len(f.examples), expected) + 1, None, problem)


# ----------------------------------------------------------------------------- scoring


def score_block(
    label: str, examples: Sequence[Example], *, reference_impl: bool = False, extras: bool = False
) -> BlockScores:
    """BLEU, ROUGE-L, dist-1 and length per line and their means (docs/original.md §7.2), no BERTScore."""
    hyps, refs = [e.recover for e in examples], [e.reference for e in examples]
    bleu = metrics.sentence_bleu_many(hyps, refs, reference_impl=reference_impl)
    rouge = metrics.rouge_l_many(hyps, refs, reference_impl=reference_impl)
    dist1 = [metrics.distinct_n(h, 1) for h in hyps]
    lengths = [metrics.length_with_empties(h) for h in hyps]
    more = {}
    if extras:
        more["corpus_bleu_sacrebleu"] = metrics.corpus_bleu_sacrebleu(hyps, refs)
        more["avg_dist2"] = np.mean([metrics.distinct_n(h, 2) for h in hyps])
    means = dict(avg_bleu=np.mean(bleu), avg_rouge_l=np.mean(rouge), avg_dist1=np.mean(dist1))
    return BlockScores(
        label, bleu, rouge, dist1, lengths, **means, avg_len=np.mean(lengths), extras=more
    )


def _init_worker() -> None:
    """Pool workers compute pure-Python metrics; keep any inherited torch to one thread."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pairwise_matrices(
    groups: Sequence[Sequence[str]], *, reference_impl: bool = False, workers: int = 1
) -> list[metrics.BleuMatrix]:
    """:func:`metrics.pairwise_bleu` of every line's candidates, in a process pool when it pays."""
    n_pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    work = partial(metrics.pairwise_bleu_many, reference_impl=reference_impl)
    if workers <= 1 or n_pairs < POOL_MIN_PAIRS:
        return work(groups)
    size = -(-len(groups) // (4 * workers))  # 4 chunks per worker balance uneven lines
    chunks = [groups[i : i + size] for i in range(0, len(groups), size)]
    context = get_context("fork")  # workers need no torch and no re-import of __main__
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        return [m for chunk in pool.map(work, chunks) for m in chunk]


def score_diversity(
    groups: Sequence[Sequence[str]], matrices: Sequence[metrics.BleuMatrix], *, extras: bool = False
) -> DiversityScores:
    """Per-line self-BLEU and div-4 of the candidate sets, and their means (docs/original.md §7.3)."""
    sb = [metrics.self_bleu(m) for m in matrices]
    div4 = [metrics.distinct_n_pooled(g, 4) for g in groups]
    sym = [metrics.self_bleu_symmetric(m) for m in matrices] if extras else []
    more = {"avg_self_bleu_symmetric": np.mean(sym)} if extras else {}
    return DiversityScores(sb, div4, np.mean(sb), np.mean(div4), more, sym)


def select_mbr(
    files: Sequence[CandidateFile], matrices: Sequence[metrics.BleuMatrix]
) -> tuple[list[int], list[Example]]:
    """MBR choice per line; reference and source come from the first file (docs/original.md §7.3)."""
    chosen = [metrics.mbr_select(m) for m in matrices]
    examples = [
        replace(files[0].examples[i], recover=files[k].examples[i].recover)
        for i, k in enumerate(chosen)
    ]
    return chosen, examples


# ----------------------------------------------------------------------------- report


def block_lines(block: BlockScores, *, mbr: bool = False, show_extras: bool = False) -> list[str]:
    """The metric lines the original prints after a block's ``*`` line (docs/original.md §7.4), + extras."""
    lines = [
        STARS,
        f"avg BLEU score {block.avg_bleu}",
        f"avg {'ROUGE-l' if mbr else 'ROUGE-L'} score {block.avg_rouge_l}",
        f"avg berscore {block.bertscore_text}",
        f"avg dist1 score {block.avg_dist1}",
    ]
    if not mbr:
        lines.append(f"avg len {block.avg_len}")
    return lines + (extra_lines(block.extras) if show_extras else [])


def extra_lines(extras: dict[str, float]) -> list[str]:
    """Lines for the extra metrics (printed with ``--extras``), each marked ``[extra]``."""
    names = {
        "corpus_bleu_sacrebleu": "corpus BLEU (sacrebleu, 0-100)",
        "avg_dist2": "avg dist2 score",
        "avg_self_bleu_symmetric": "avg symmetric selfBleu score",
        "avg_len": "avg len (MBR)",
    }
    return [f"[extra] {names[k]} {v}" for k, v in extras.items()]


def _with_bertscore(
    block: BlockScores, examples: Sequence[Example], bertscore: BertScoreFn | None, status: str
) -> BlockScores:
    if bertscore is None:
        return replace(block, bertscore_text=status)
    value, text = bertscore([e.recover for e in examples], [e.reference for e in examples])
    return replace(block, bertscore=value, bertscore_text=text)


def evaluate(
    files: Sequence[CandidateFile],
    *,
    mbr: bool = False,
    reference_impl: bool = False,
    extras: bool = False,
    show_extras: bool | None = None,
    workers: int = 1,
    bertscore: BertScoreFn | None = None,
    bertscore_status: str = "skipped",
    summary: bool = False,
    echo: Callable[[str], None] = print,
) -> EvalReport:
    """Score the files, then diversity (or MBR with ``mbr``) if there are several, and print.

    Args:
        files: candidate files in sorted order (one example per line, equal lengths).
        mbr: MBR selection instead of diversity (only with more than one file, as the original).
        reference_impl: compute BLEU/ROUGE-L with nltk/torchmetrics directly (slow, for checks).
        extras: also compute corpus BLEU, dist-2, symmetric self-BLEU, MBR avg len.
        show_extras: print the extras as ``[extra]`` lines (default: ``extras``).
        workers: processes for the pairwise BLEU of diversity/MBR (pool only above a size).
        bertscore: ``(hyps, refs) -> (mean F1, printed text)``; if ``None``, the BERTScore
            line shows ``bertscore_status``.
        summary: after the original's lines, print the table across files
            (:mod:`diffuseq.evaluation.summary`; ``report.summary`` is always filled for
            several files, and with ``mbr`` the candidate set's diversity is computed too).
        echo: receives each report line (``print`` by default).
    Returns:
        the :class:`EvalReport`; ``report.lines`` are the lines given to ``echo``.
    """
    check_same_length(files)
    show = extras if show_extras is None else show_extras
    blocks = [
        score_block(f.path, f.examples, reference_impl=reference_impl, extras=extras) for f in files
    ]
    multi = len(files) > 1
    groups = [list(g) for g in zip(*(f.hypotheses for f in files), strict=True)]
    matrices = (
        pairwise_matrices(groups, reference_impl=reference_impl, workers=workers) if multi else []
    )
    lines: list[str] = []

    def emit(*new: str) -> None:
        lines.extend(new)
        for line in new:
            echo(line)

    for k, f in enumerate(files):  # BERTScore after the pool, in the original's print order
        emit(f.path)
        blocks[k] = _with_bertscore(blocks[k], f.examples, bertscore, bertscore_status)
        emit(*block_lines(blocks[k], show_extras=show))
    diversity = mbr_result = None
    if multi and not mbr:
        diversity = score_diversity(groups, matrices, extras=extras)
        emit(
            STARS,
            "Compute diversity...",
            STARS,
            f"avg selfBleu score {diversity.avg_self_bleu}",
            f"avg div4 score {diversity.avg_div4}",
            *(extra_lines(diversity.extras) if show else []),
        )
    elif multi:
        emit(STARS, "MBR...", STARS)
        chosen, examples = select_mbr(files, matrices)
        block = score_block("MBR", examples, reference_impl=reference_impl, extras=extras)
        if extras:  # computed but not printed by the original
            block = replace(block, extras={**block.extras, "avg_len": block.avg_len})
        block = _with_bertscore(block, examples, bertscore, bertscore_status)
        emit(*block_lines(block, mbr=True, show_extras=show))
        mbr_result = MbrResult(selected_file_index=chosen, examples=examples, scores=block)
        diversity = score_diversity(groups, matrices, extras=extras)  # not printed (original)
    table = None
    if multi:
        table = summarize(blocks, mbr=mbr_result and mbr_result.scores, diversity=diversity)
        if summary:
            emit(*summary_lines(table))
    return EvalReport(files=blocks, diversity=diversity, mbr=mbr_result, lines=lines, summary=table)
