"""Decode-time text: the three output strings, ``--cut_at_sep``, ``--input`` files, encoding.

The original's text steps of `sample_seq2seq.py` (docs/original.md §5.13) and its input layout
(§3.3), shared by the decode job (:mod:`diffuseq.decoding.job`) and the Python API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffuseq.data.dataset import merge_and_mask
from diffuseq.data.jsonl import iter_records
from diffuseq.tokenizers.base import UnknownTokens

__all__ = ["EncodedInputs", "cut_at_sep", "read_input_file", "texts_from_tokens"]


def texts_from_tokens(
    tokenizer, input_ids: torch.Tensor, input_mask: torch.Tensor, tokens: torch.Tensor
) -> list[dict[str, str]]:
    """The original's three strings per row (docs/original.md §5.13), special tokens kept.

    Args:
        input_ids, input_mask, tokens: ``[B, L]``.

    Returns:
        ``[{"recover", "reference", "source"}]`` in that key order.
    """
    out = []
    for ids, mask, toks in zip(input_ids.tolist(), input_mask.tolist(), tokens.tolist()):
        len_x = len(mask) - sum(mask)
        out.append(
            {
                "recover": tokenizer.decode(toks[len_x:]),
                "reference": tokenizer.decode(ids[len_x:]),
                "source": tokenizer.decode(ids[:len_x]),
            }
        )
    return out


def cut_at_sep(text: str, special_tokens: dict[str, str]) -> str:
    """Cut at the first ``sep``/``eos`` token and drop the special tokens (``--cut_at_sep``).

    >>> cut_at_sep("[CLS] how old are you? [SEP] [PAD] you [PAD]", {"sos": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "pad": "[PAD]"})
    'how old are you?'
    """
    stops = [
        special_tokens[k]
        for k in ("sep", "eos")
        if special_tokens.get(k) and special_tokens[k] in text
    ]
    if stops:
        text = text[: min(text.index(s) for s in stops)]
    for token in set(special_tokens.values()):
        text = text.replace(token, " ")
    return " ".join(text.split())


def read_input_file(path: str | Path) -> list[tuple[str, str]]:
    """``--input FILE.jsonl``: one ``{"src": ..., "trg": ...}`` per line, ``trg`` optional ("").

    Blank lines are skipped. Raises :class:`DataError` as :func:`diffuseq.data.jsonl.iter_records`.
    """
    records = iter_records(path, ("src",), optional={"trg": ""}, skip_blank=True, flag="--input")
    return [(r["src"].strip(), r["trg"].strip()) for _, r in records]


@dataclass(frozen=True)
class EncodedInputs:
    """Merged examples (docs/original.md §3.3): ``input_ids``/``input_mask`` int64 ``[N, L]``;
    ``unknown`` counts the sources' tokens that became the unknown token (report it with
    ``inputs.unknown.report(log, "decode inputs")``)."""

    input_ids: torch.Tensor
    input_mask: torch.Tensor
    unknown: UnknownTokens | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_pairs(
        cls, pairs: Sequence[tuple[str, str]], tokenizer, *, seq_len: int
    ) -> EncodedInputs:
        sources = tokenizer.encode([s for s, _ in pairs])
        targets = tokenizer.encode([t for _, t in pairs])
        unknown = UnknownTokens(tokenizer)
        unknown.add(sources)
        merged = [
            merge_and_mask(
                x,
                y,
                seq_len=seq_len,
                sep_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            for x, y in zip(sources, targets)
        ]
        return cls(
            torch.tensor([ids for ids, _ in merged], dtype=torch.long),
            torch.tensor([mask for _, mask in merged], dtype=torch.long),
            unknown,
        )
