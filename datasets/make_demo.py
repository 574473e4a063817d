"""Generate the bundled demo dataset: a small synthetic rewriting task for quick CPU runs.

Each source sentence is built from one of eight templates with random slot words (names,
objects, adjectives, verbs, places, days); the target is a deterministic rewrite of it that
copies every slot word to a new position, reorders them, and for some templates inflects the
verb (``buy`` → ``bought``). A model must read the whole source to produce the target, yet a
small DiffuSeq model learns the task on a laptop CPU in minutes.

Writes ``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` (one ``{"src": ..., "trg": ...}`` per
line, no source sentence repeated across or within splits) and ``vocab.txt`` (the original
DiffuSeq word-level vocab format: one token per line, most frequent first). The output depends
only on the arguments: running it again gives byte-identical files.

Usage::

    python datasets/make_demo.py --out datasets/demo            # the committed files
    python datasets/make_demo.py --seed 7 --train 50000 --out /tmp/demo_big
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

NAMES = (
    "alice", "bob", "carol", "dave", "emma", "frank", "grace", "henry",
    "ivy", "jack", "kate", "leo", "mia", "nora", "oscar", "paul",
)  # fmt: skip
OBJECTS = (
    "apple", "bag", "book", "bottle", "box", "cake", "chair", "coat", "cup", "desk",
    "door", "hat", "key", "lamp", "letter", "map", "pen", "phone", "plate", "radio",
    "ring", "shirt", "shoe", "sofa", "table", "ticket", "toy", "vase", "wallet", "watch",
)  # fmt: skip
ADJECTIVES = (
    "big", "small", "old", "new", "red", "blue", "green", "black", "white", "yellow",
    "heavy", "light", "cheap", "expensive", "clean", "dirty", "soft", "hard", "warm", "cold",
)  # fmt: skip
# verb: (base, past, past participle)
VERBS = (
    ("buy", "bought", "bought"), ("sell", "sold", "sold"), ("find", "found", "found"),
    ("lose", "lost", "lost"), ("clean", "cleaned", "cleaned"), ("fix", "fixed", "fixed"),
    ("paint", "painted", "painted"), ("carry", "carried", "carried"),
    ("open", "opened", "opened"), ("move", "moved", "moved"), ("wash", "washed", "washed"),
    ("hide", "hid", "hidden"), ("break", "broke", "broken"), ("take", "took", "taken"),
    ("return", "returned", "returned"), ("steal", "stole", "stolen"),
)  # fmt: skip
PLACES = (
    "kitchen", "garden", "office", "school", "market", "station", "library",
    "park", "shop", "hotel", "bank", "garage", "attic", "cellar",
)  # fmt: skip
DAYS = ("today", "yesterday", "monday", "tuesday", "friday", "saturday", "sunday", "tonight")

Pair = tuple[str, str]
# Well below the ~1.4 million distinct sources the templates can produce.
MAX_EXAMPLES = 1_000_000


def _questions(rng: random.Random) -> Pair:
    verb, _, _ = rng.choice(VERBS)
    adj, obj = rng.choice(ADJECTIVES), rng.choice(OBJECTS)
    return (
        f"how can i {verb} a {adj} {obj} ?",
        f"what is the best way to {verb} a {adj} {obj} ?",
    )


def _passive(rng: random.Random) -> Pair:
    _, past, participle = rng.choice(VERBS)
    name, obj, place = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(PLACES)
    return (
        f"{name} {past} the {obj} in the {place}",
        f"the {obj} in the {place} was {participle} by {name}",
    )


def _where(rng: random.Random) -> Pair:
    adj, obj, name = rng.choice(ADJECTIVES), rng.choice(OBJECTS), rng.choice(NAMES)
    return (
        f"where is the {adj} {obj} of {name} ?",
        f"where did {name} put the {adj} {obj} ?",
    )


def _choice(rng: random.Random) -> Pair:
    obj = rng.choice(OBJECTS)
    first, second = rng.sample(ADJECTIVES, 2)
    return (
        f"is the {obj} {first} or {second} ?",
        f"tell me if the {obj} is {second} or {first}",
    )


def _gift(rng: random.Random) -> Pair:
    giver, receiver = rng.sample(NAMES, 2)
    adj, obj, day = rng.choice(ADJECTIVES), rng.choice(OBJECTS), rng.choice(DAYS)
    return (
        f"{giver} gave {receiver} a {adj} {obj} on {day}",
        f"on {day} {receiver} got a {adj} {obj} from {giver}",
    )


def _confirm(rng: random.Random) -> Pair:
    verb, past, _ = rng.choice(VERBS)
    name, obj, day = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(DAYS)
    return (
        f"did {name} {verb} the {obj} {day} ?",
        f"{name} {past} the {obj} {day} , right ?",
    )


def _location(rng: random.Random) -> Pair:
    adj, obj, place = rng.choice(ADJECTIVES), rng.choice(OBJECTS), rng.choice(PLACES)
    return (
        f"the {adj} {obj} is in the {place}",
        f"the {place} has the {adj} {obj}",
    )


def _wish(rng: random.Random) -> Pair:
    first, second = rng.sample(NAMES, 2)
    verb, _, _ = rng.choice(VERBS)
    obj = rng.choice(OBJECTS)
    return (
        f"{first} and {second} want to {verb} the {obj}",
        f"the {obj} is what {second} and {first} want to {verb}",
    )


TEMPLATES: tuple[Callable[[random.Random], Pair], ...] = (
    _questions, _passive, _where, _choice, _gift, _confirm, _location, _wish,
)  # fmt: skip


def generate_split(rng: random.Random, size: int, seen: set[str]) -> list[Pair]:
    """``size`` pairs whose sources are not in ``seen`` (which is updated)."""
    pairs: list[Pair] = []
    while len(pairs) < size:
        src, trg = rng.choice(TEMPLATES)(rng)
        if src not in seen:
            seen.add(src)
            pairs.append((src, trg))
    return pairs


def all_words() -> set[str]:
    """Every word any template can produce."""
    words = {w for verb in VERBS for w in verb}
    words.update(NAMES, OBJECTS, ADJECTIVES, PLACES, DAYS)
    rng = random.Random(0)
    for template in TEMPLATES:  # the fixed words of each template
        for text in template(rng):
            words.update(text.split())
    return words


def vocab_lines(train: Sequence[Pair]) -> list[str]:
    """All words, by frequency in the training split (ties and unseen words alphabetical)."""
    counts = Counter(w for src, trg in train for w in f"{src} {trg}".split())
    return sorted(all_words() | set(counts), key=lambda w: (-counts[w], w))


def write_jsonl(path: Path, pairs: Sequence[Pair]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for src, trg in pairs:
            handle.write(json.dumps({"src": src, "trg": trg}) + "\n")


def make_demo(out: Path, *, seed: int, train: int, valid: int, test: int) -> None:
    """Write the three splits and ``vocab.txt`` into ``out``.

    Test is drawn first, then valid, then train, from one ``random.Random(seed)`` stream, so the
    test split does not change when only the training size does.
    """
    sizes = {"test": test, "valid": valid, "train": train}
    if sum(sizes.values()) > MAX_EXAMPLES:
        raise SystemExit(f"at most {MAX_EXAMPLES} examples in total")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {name: generate_split(rng, size, seen) for name, size in sizes.items()}
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        write_jsonl(out / f"{name}.jsonl", pairs)
    lines = vocab_lines(splits["train"])
    (out / "vocab.txt").write_text("".join(f"{w}\n" for w in lines), encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--train", type=int, default=20000, help="training pairs")
    parser.add_argument("--valid", type=int, default=500, help="validation pairs")
    parser.add_argument("--test", type=int, default=200, help="test pairs")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    make_demo(args.out, seed=args.seed, train=args.train, valid=args.valid, test=args.test)


if __name__ == "__main__":
    main()
