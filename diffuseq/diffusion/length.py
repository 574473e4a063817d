"""Target-length prediction for the Gaussian family (``--length_predict``, ``--length_beam``).

Beyond the original. Difformer (Gao et al. 2022, arXiv 2212.09412, §3 "length prediction") and
DINOISER (Ye et al. 2023, Table 3) predict the target length from the source and decode a few
lengths, so that the denoiser does not spend capacity on ``[PAD]`` positions. In the merged
layout ``[CLS] x… [SEP] [SEP] [CLS] y… [SEP] PAD…`` (docs/original.md §3.3) the input mask ``m``
is 0 on the ``len_x`` source positions and 1 on the target span *and* the padding; with a
length head:

* training restricts the mask to the span, ``m' = m · [w ≠ PAD]`` (:func:`span_mask`), so
  partial noising keeps the padding clean like the source, and adds ``λ·CE(logits, n)`` with
  ``n = Σ_L m'`` the length of ``[CLS] y… [SEP]`` (:func:`target_lengths`,
  :func:`length_losses`);
* decoding takes the ``K`` most likely lengths in ``[1, L − len_x]`` (:func:`length_candidates`),
  samples ``K`` copies of each row whose mask is 1 on ``[len_x, len_x + L_k)`` only and whose
  ids beyond are ``PAD`` (:func:`length_rows`), and keeps per row the copy whose top-1 tokens
  have the highest mean log-probability (:func:`span_scores`, :func:`pick_copies`).

Pure tensor functions: no model, no trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "length_candidates",
    "length_losses",
    "length_rows",
    "pick_copies",
    "span_mask",
    "span_scores",
    "target_lengths",
]


def span_mask(input_ids: torch.Tensor, input_mask: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """``m' = m · [w ≠ PAD]``: 1 on the target span ``[CLS] y… [SEP]`` only.

    Args:
        input_ids: w int64 ``[B, L]``; input_mask: m ``[B, L]`` (0 = source).

    Returns:
        ``[B, L]`` of ``input_mask``'s dtype.
    """
    return input_mask * (input_ids != pad_token_id).to(input_mask.dtype)


def target_lengths(
    input_ids: torch.Tensor, input_mask: torch.Tensor, pad_token_id: int
) -> torch.Tensor:
    """``n = Σ_L m'`` (:func:`span_mask`): int64 ``[B]``, the length of ``[CLS] y… [SEP]``."""
    return span_mask(input_ids, input_mask, pad_token_id).long().sum(dim=-1)


def length_losses(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-example ``CE(logits, n)``: logits ``[B, L+1]`` over lengths ``0..L``, lengths
    int64 ``[B]`` -> float32 ``[B]``."""
    return F.cross_entropy(logits.float(), lengths, reduction="none")


def length_candidates(logits: torch.Tensor, input_mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most likely lengths of each row within ``[1, room]``, most likely first.

    ``room = Σ_L m`` (the positions after the source, ``L − len_x``). A row with fewer than
    ``k`` allowed lengths repeats its most likely one (the copies then tie, and
    :func:`pick_copies` keeps the first).

    Args:
        logits: ``[B, L+1]`` over lengths ``0..L``; input_mask: m ``[B, L]``; k: ``K ≥ 1``.

    Returns:
        int64 ``[B, K]``.
    """
    B, n = logits.shape
    room = input_mask.long().sum(dim=-1, keepdim=True)  # [B, 1]
    lengths = torch.arange(n, device=logits.device).expand(B, n)
    allowed = (lengths >= 1) & (lengths <= room)  # [B, L+1]
    masked = logits.float().masked_fill(~allowed, float("-inf"))
    values, top = torch.topk(masked, k=min(k, n), dim=-1)  # [B, K], sorted
    top = torch.where(torch.isfinite(values), top, top[:, :1])
    return top.clamp(min=1)  # a row without room (never in the layout) decodes one position


def length_rows(
    input_ids: torch.Tensor, input_mask: torch.Tensor, lengths: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` copies of every row, copy ``k`` of row ``r`` at ``r·K + k`` with target length
    ``lengths[r, k]``: mask 1 on ``[len_x, len_x + L_k)`` and 0 elsewhere (the padding is kept
    clean like the source), ids ``PAD`` from ``len_x + L_k`` on (the source and the span as given).

    Args:
        input_ids: int64 ``[B, L]``; input_mask: m ``[B, L]`` (0 = source, 1 after it);
        lengths: int64 ``[B, K]``.

    Returns:
        ``(ids [B·K, L], mask [B·K, L])`` (the mask of ``input_mask``'s dtype).
    """
    B, L = input_ids.shape
    K = lengths.shape[1]
    len_x = (L - input_mask.long().sum(dim=-1)).repeat_interleave(K)  # [B·K]
    end = len_x + lengths.reshape(-1)  # [B·K]
    pos = torch.arange(L, device=input_ids.device)[None, :]  # [1, L]
    span = (pos >= len_x[:, None]) & (pos < end[:, None])  # [B·K, L]
    ids = input_ids.repeat_interleave(K, dim=0)
    ids = torch.where(pos >= end[:, None], torch.full_like(ids, pad_token_id), ids)
    return ids, span.to(input_mask.dtype)


def span_scores(logits: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the top-1 tokens over the span: logits ``[N, L, V]`` (fp32),
    span ``[N, L]`` 0/1 -> float32 ``[N]`` (``max_V log_softmax``, averaged where span is 1)."""
    logits = logits.float()
    best = logits.amax(dim=-1) - torch.logsumexp(logits, dim=-1)  # max log_softmax [N, L]
    weight = span.float()
    return (best * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1.0)


def pick_copies(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Index ``r·K + k*`` of each row's best copy: scores ``[B·K]`` -> int64 ``[B]``; ties go
    to the lower ``k`` (the more probable length, :func:`length_candidates`' order)."""
    best = torch.argmax(scores.reshape(-1, k), dim=-1)  # argmax returns the first maximum
    return torch.arange(best.shape[0], device=scores.device) * k + best
