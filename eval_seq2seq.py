"""Evaluate decode outputs like the original scripts/eval_seq2seq.py (diffuseq/cli/evaluate.py)."""

from diffuseq.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
