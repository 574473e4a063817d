"""Data for the time-to-quality benchmark (:mod:`bench.bench_quality`), made by script.

Three tasks, each written as a data folder the training CLI reads (``train.jsonl``,
``valid.jsonl``, ``test.jsonl``; the synthetic one also a word-level ``vocab.txt``):

``clauses`` (synthetic, harder than the demo)
    Sources of 11–17 words: two clauses, each from one of four templates (a gift, a past
    action at a place, where something is, a wish), joined by ``;``. The slot words are invented
    (50 names, 70 objects, 30 places, plus 16 verbs with their past forms: 202 words). The
    target rewrites each clause (passive voice with the participle, swapped roles, moved
    phrases) and joins the two rewrites with ``and`` when the clauses share a name and ``but``
    when they do not::

        src: "luki gave fasa the seso ; fupi gave luki the kera"
        trg: "fasa got the seso from luki and luki got the kera from fupi"

    The target's words, their positions and its length follow from the templates and slot
    words of both clauses, and the joining word from comparing the names across them. Copying
    the source scores about 0.22 BLEU.

    Tried first and dropped: grouping the category words of a source by category (6 × 45
    invented words among fillers) and keeping only the category words; v1 and v1 +
    self-conditioning both stayed at BLEU ≈ 0.02 after 1000 steps (the model had not started
    to copy words), which cannot show a difference between recipes.

``sortcount`` (synthetic, of another kind: global reordering and counting, no templates)
    Sources of 3–18 words: 3–6 distinct words of 40 invented ones, each 1–3 times, shuffled; the
    target lists each distinct word once, in alphabetical order, each followed by its count as
    a number word::

        src: "kera luki kera fasa tomu kera"
        trg: "fasa one kera three luki one tomu one"

    Every target word depends on the whole source (which words occur, how often, and their
    order in the alphabet), so position-by-position copying does not help; copying the source
    scores about 0.04 BLEU.

``qqp`` (real data)
    The 2047 QQP paraphrase pairs of the shared data folder, shuffled with a fixed seed and
    split 1747 / 100 / 200 (train / valid / test), lower-cased with punctuation split off, with
    a word-level vocab of the 2684 training-split words seen twice or more (about 10% of the
    test split's words become ``[UNK]``, in references and outputs alike). The paper's BERT
    vocab would make the output layer 11× wider, too slow for this benchmark on a CPU.

Everything depends only on the arguments: running it again gives byte-identical files.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
NAMES, OBJECTS, PLACES = 50, 70, 30  # invented words per slot class


def _demo_generator():
    """``datasets/make_demo.py`` (loaded by path: ``datasets`` may also be the pip package)."""
    path = Path(__file__).resolve().parents[1] / "datasets" / "make_demo.py"
    spec = importlib.util.spec_from_file_location("make_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VERBS = _demo_generator().VERBS  # the demo's 16 verbs: (base, past, past participle)
CLAUSES_SIZES = {"train": 20000, "valid": 200, "test": 200}
QQP_SIZES = {"train": 1747, "valid": 100, "test": 200}
SORTCOUNT_SIZES = {"train": 20000, "valid": 200, "test": 200}
SORTCOUNT_WORDS = 40
COUNT_WORDS = ("zero", "one", "two", "three")


def invented_words(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct two-syllable words (consonant-vowel-consonant-vowel)."""
    pool = sorted(
        {a + b + c + d for a in CONSONANTS for b in VOWELS for c in CONSONANTS for d in VOWELS}
    )
    return rng.sample(pool, count)


@dataclass(frozen=True)
class Lexicon:
    """The slot words of the ``clauses`` task (invented words, one class each)."""

    names: tuple[str, ...]
    objects: tuple[str, ...]
    places: tuple[str, ...]

    @classmethod
    def make(cls, seed: int = 0) -> Lexicon:
        words = invented_words(NAMES + OBJECTS + PLACES, random.Random(seed))
        return cls(
            tuple(words[:NAMES]),
            tuple(words[NAMES : NAMES + OBJECTS]),
            tuple(words[NAMES + OBJECTS :]),
        )


Clause = tuple[list[str], list[str], set[str]]  # source words, rewrite, names in it


def clause(rng: random.Random, lex: Lexicon) -> Clause:
    """One clause of a source, its rewrite and the names it mentions (4 templates)."""
    a, b = rng.sample(lex.names, 2)
    obj, place = rng.choice(lex.objects), rng.choice(lex.places)
    base, past, participle = rng.choice(VERBS)
    kind = rng.randrange(4)
    if kind == 0:
        return (f"{a} gave {b} the {obj}", f"{b} got the {obj} from {a}", {a, b})
    if kind == 1:
        return (
            f"{a} {past} the {obj} in the {place}",
            f"the {obj} in the {place} was {participle} by {a}",
            {a},
        )
    if kind == 2:
        return (f"the {obj} of {a} is in the {place}", f"{a} keeps the {obj} in the {place}", {a})
    return (
        f"{a} and {b} want to {base} the {obj}",
        f"the {obj} is what {b} and {a} want to {base}",
        {a, b},
    )


def clauses_example(rng: random.Random, lex: Lexicon) -> tuple[str, str]:
    """A source of two clauses and its target: each clause rewritten, joined by ``and`` when
    the clauses share a name and by ``but`` when they do not."""
    (src1, trg1, names1), (src2, trg2, names2) = clause(rng, lex), clause(rng, lex)
    if rng.random() < 0.5:  # half the sources repeat a name of the first clause in the second
        shared = rng.choice(sorted(names1))
        victim = rng.choice(sorted(names2))
        if shared not in names2:
            src2 = " ".join(shared if w == victim else w for w in src2.split())
            trg2 = " ".join(shared if w == victim else w for w in trg2.split())
            names2 = (names2 - {victim}) | {shared}
    joint = "and" if names1 & names2 else "but"
    return f"{src1} ; {src2}", f"{trg1} {joint} {trg2}"


def make_clauses(out: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the ``clauses`` task's splits and word-level vocab to ``out``; no source repeats."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lex = Lexicon.make(seed)
    rng = random.Random(seed + 1)
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    for split, size in (sizes or CLAUSES_SIZES).items():
        lines = []
        while len(lines) < size:
            source, target = clauses_example(rng, lex)
            if source in seen:
                continue
            seen.add(source)
            counts.update(source.split() + target.split())
            lines.append(json.dumps({"src": source, "trg": target}))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    words = [*lex.names, *lex.objects, *lex.places, *(w for v in VERBS for w in v)]
    vocab = [w for w, _ in counts.most_common()] + sorted(set(words) - set(counts))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return out


def sortcount_example(rng: random.Random, words: tuple[str, ...]) -> tuple[str, str]:
    """3–6 distinct words, each 1–3 times, shuffled; the target lists them sorted with counts."""
    counts = {w: rng.randint(1, 3) for w in rng.sample(words, rng.randint(3, 6))}
    source = [w for w, n in counts.items() for _ in range(n)]
    rng.shuffle(source)
    target = [x for w in sorted(counts) for x in (w, COUNT_WORDS[counts[w]])]
    return " ".join(source), " ".join(target)


def make_sortcount(out: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the ``sortcount`` task's splits and word-level vocab to ``out``; no source repeats."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = tuple(invented_words(SORTCOUNT_WORDS, random.Random(seed + 7)))
    rng = random.Random(seed + 8)
    seen: set[str] = set()
    for split, size in (sizes or SORTCOUNT_SIZES).items():
        lines = []
        while len(lines) < size:
            source, target = sortcount_example(rng, words)
            if source in seen:
                continue
            seen.add(source)
            lines.append(json.dumps({"src": source, "trg": target}))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (out / "vocab.txt").write_text("\n".join([*sorted(words), *COUNT_WORDS[1:]]) + "\n")
    return out


def qqp_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of a QQP question (``"Why?"`` → ``why ?``)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def make_qqp(qqp_file: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Split the shared QQP pairs (one JSONL file) into train / valid / test in ``out``, the
    text lower-cased with punctuation split off, and write a word-level ``vocab.txt`` of the
    training split's words seen at least twice (others become ``[UNK]`` on both sides)."""
    lines = [json.loads(line) for line in Path(qqp_file).read_text().splitlines() if line.strip()]
    need = sum(QQP_SIZES.values())
    if len(lines) < need:
        raise ValueError(f"{qqp_file}: {len(lines)} pairs, the benchmark's split needs {need}")
    random.Random(seed).shuffle(lines)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, counts = 0, Counter()
    for split, size in QQP_SIZES.items():
        pairs = [
            {"src": " ".join(qqp_words(p["src"])), "trg": " ".join(qqp_words(p["trg"]))}
            for p in lines[start : start + size]
        ]
        if split == "train":
            counts.update(w for p in pairs for side in p.values() for w in side.split())
        (out / f"{split}.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
        start += size
    vocab = [w for w, n in counts.most_common() if n >= 2]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return out
