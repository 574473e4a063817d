"""Generate a data folder the size of the paper's dialogue task (CCD, Commonsense Conversation).

CCD has 3,382,137 training pairs. This script writes ``train.jsonl`` with that many synthetic
pairs (default), plus small ``valid.jsonl`` and ``test.jsonl``, in the toolkit's format
(``{"src": ..., "trg": ...}`` per line). Each side has 5-30 words drawn uniformly in length,
words drawn Zipf-like from the whole-word entries of a BERT vocabulary, so BERT tokenization
costs about what it costs on real English text. The output is deterministic for a given
``--seed`` and is not committed (about 0.7 GB for the default size).

Example (from the repository root):
  python -m bench.make_ccd_like --vocab /path/to/bert-base-uncased-vocab.txt --out bench/out/ccd
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

CCD_TRAIN_PAIRS = 3_382_137


def word_list(vocab_path: str | os.PathLike) -> list[str]:
    """Whole alphabetic words of a WordPiece vocabulary (no ``##`` pieces, no ``[X]`` specials,
    no single letters but ``a`` and ``i``), in the vocabulary's order."""
    words = []
    with open(vocab_path, encoding="utf-8") as handle:
        for line in handle:
            token = line.strip()
            if token.isascii() and token.isalpha() and (len(token) > 1 or token in "ai"):
                words.append(token)
    if len(words) < 100:
        raise SystemExit(
            f"{vocab_path}: found only {len(words)} whole words; pass a BERT vocab.txt"
        )
    return words


def write_split(path: Path, words: list[str], count: int, rng: np.random.Generator) -> int:
    """Write ``count`` pairs to ``path`` (atomically); return the bytes written."""
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    prob = 1.0 / ranks  # Zipf with exponent 1 over the vocabulary's order
    prob /= prob.sum()
    vocab = np.array(words, dtype=object)
    tmp = path.with_suffix(".jsonl.tmp")
    block = 20_000
    with open(tmp, "w", encoding="utf-8") as handle:
        for start in range(0, count, block):
            n = min(block, count - start)
            lengths = rng.integers(5, 31, size=(n, 2))  # words per side, 5..30
            drawn = vocab[rng.choice(len(words), size=int(lengths.sum()), p=prob)]
            cuts = np.cumsum(lengths.ravel())[:-1]
            sides = [" ".join(chunk) for chunk in np.split(drawn, cuts)]
            handle.writelines(
                json.dumps({"src": sides[2 * i], "trg": sides[2 * i + 1]}) + "\n" for i in range(n)
            )
    os.replace(tmp, path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", required=True, help="a BERT vocab.txt (one token per line)")
    parser.add_argument("--out", required=True, help="output data folder")
    parser.add_argument("--train", type=int, default=CCD_TRAIN_PAIRS, help="training pairs")
    parser.add_argument("--valid", type=int, default=2000, help="validation pairs")
    parser.add_argument("--test", type=int, default=2000, help="test pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    words = word_list(args.vocab)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, count in (("valid", args.valid), ("test", args.test), ("train", args.train)):
        size = write_split(out / f"{split}.jsonl", words, count, rng)
        print(f"{out / f'{split}.jsonl'}: {count} pairs, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
