"""Data for the time-to-quality benchmark (:mod:`bench.bench_quality`), made by script.

Two tasks, each written as a data folder the training CLI reads (``train.jsonl``,
``valid.jsonl``, ``test.jsonl``; the synthetic one also a word-level ``vocab.txt``):

``grouping`` (synthetic, harder than the demo)
    A vocabulary of 6 categories × 45 invented words + 45 invented filler words + the 6
    category names (= 321 words). A source is 10–30 words: 4–9 category words (each of a random
    category) scattered among fillers. The target lists the source's category words grouped by
    category in a fixed category order, each group headed by its category's name, words kept in
    source order within a group, fillers dropped::

        src: "zuvo keta mipa rolu dase vibo nuka tega ..."
        trg: "animal keta dase tool vibo food mipa tega"

    The invented words carry no hint of their category in their spelling: the model has to
    learn 270 word → category memberships, find the category words among the fillers, and
    place each one after the words of the earlier categories, so both the target's content and
    its length (category words + groups present) depend on the whole source. Copying the
    source scores about 0.06 BLEU.

``qqp`` (real data)
    The 2047 QQP paraphrase pairs of the shared data folder, shuffled with a fixed seed and
    split 1747 / 100 / 200 (train / valid / test). Tokenized with the BERT vocab given.

Everything depends only on the arguments: running it again gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

CATEGORIES = ("animal", "tool", "food", "color", "place", "person")
WORDS_PER_CATEGORY = 45
FILLERS = 45
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SOURCE_WORDS = (10, 30)
CATEGORY_WORDS = (4, 9)
GROUPING_SIZES = {"train": 20000, "valid": 200, "test": 200}
QQP_SIZES = {"train": 1747, "valid": 100, "test": 200}


def invented_words(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct two-syllable words (consonant-vowel-consonant-vowel), no real word."""
    pool = sorted(
        {a + b + c + d for a in CONSONANTS for b in VOWELS for c in CONSONANTS for d in VOWELS}
    )
    return rng.sample(pool, count)


def grouping_lexicon(seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    """The task's word lists: category name → its words, and the fillers."""
    rng = random.Random(seed)
    words = invented_words(len(CATEGORIES) * WORDS_PER_CATEGORY + FILLERS, rng)
    by_category = {
        name: words[i * WORDS_PER_CATEGORY : (i + 1) * WORDS_PER_CATEGORY]
        for i, name in enumerate(CATEGORIES)
    }
    return by_category, words[len(CATEGORIES) * WORDS_PER_CATEGORY :]


def grouping_target(source: Sequence[str], category_of: dict[str, str]) -> list[str]:
    """The target of one source: category words grouped in :data:`CATEGORIES` order."""
    target = []
    for name in CATEGORIES:
        members = [w for w in source if category_of.get(w) == name]
        if members:
            target += [name, *members]
    return target


def grouping_example(
    rng: random.Random, by_category: dict[str, list[str]], fillers: Sequence[str]
) -> list[str]:
    """One source: 4–9 category words placed at random positions among fillers."""
    length = rng.randint(*SOURCE_WORDS)
    count = rng.randint(*CATEGORY_WORDS)
    chosen = [rng.choice(by_category[rng.choice(CATEGORIES)]) for _ in range(count)]
    source = [rng.choice(fillers) for _ in range(length)]
    for position, word in zip(sorted(rng.sample(range(length), count)), chosen):
        source[position] = word
    return source


def make_grouping(out: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the ``grouping`` task's splits and vocab to ``out``; no source repeats."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_category, fillers = grouping_lexicon(seed)
    category_of = {w: name for name, words in by_category.items() for w in words}
    rng = random.Random(seed + 1)
    seen: set[tuple[str, ...]] = set()
    for split, size in (sizes or GROUPING_SIZES).items():
        lines = []
        while len(lines) < size:
            source = grouping_example(rng, by_category, fillers)
            if tuple(source) in seen:
                continue
            seen.add(tuple(source))
            target = grouping_target(source, category_of)
            lines.append(json.dumps({"src": " ".join(source), "trg": " ".join(target)}))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    vocab = [*CATEGORIES, *(w for ws in by_category.values() for w in ws), *fillers]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return out


def make_qqp(qqp_file: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Split the shared QQP pairs (one JSONL file) into train / valid / test in ``out``."""
    lines = [line for line in Path(qqp_file).read_text().splitlines() if line.strip()]
    need = sum(QQP_SIZES.values())
    if len(lines) < need:
        raise ValueError(f"{qqp_file}: {len(lines)} pairs, the benchmark's split needs {need}")
    random.Random(seed).shuffle(lines)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in QQP_SIZES.items():
        (out / f"{split}.jsonl").write_text("\n".join(lines[start : start + size]) + "\n")
        start += size
    return out
