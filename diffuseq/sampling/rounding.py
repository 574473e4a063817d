"""Nearest-embedding rounding ("clamping trick") of DiffuSeq (docs/original.md §5.10, golden G4).

Reimplements `denoised_fn_round` / `get_efficient_knn` of the original `diffuseq/rounding.py`:
the predicted x̂_0 is mapped to the closest word embedding, the discrete step of the DiffuSeq
paper (Gong et al., ICLR 2023, §3 "reverse process": x̂_0 is "clamped" to
EMB(argmax p(w | x̂_0)), after Diffusion-LM's rounding, Li et al. 2022 §4.2).

Distances are computed as the original does, ``d_{v,n} = ‖E_v‖² + ‖x_n‖² − 2·E_v·x_n`` (in that
order), clamped at 0, and the token is the top-1 of ``−d`` over the vocabulary. Unlike the
original (one ``[V, B·L]`` matrix: 30522 × 3200 × 4 B ≈ 390 MB for BERT and a 50 × 64 batch),
positions are processed in chunks so that the ``[V, n]`` intermediates stay under a memory
budget. Each column's arithmetic is unchanged by chunking.

Ties: ``torch.topk`` does not document which index it returns on exact ties, and on CPU it
differs between vocab sizes (checked with torch 2.13: for V ≥ 64 and V ≤ 3 it returns the
lowest index, like ``argmin``; for 4 ≤ V ≤ 63 it may return another tied index). Chunks always
hold the full vocabulary, so the tie-break depends only on V, exactly as in the original: for
V ≥ 64 we take ``argmin(d)`` (documented: the first minimal index; one pass over ``[V, n]``
instead of negating and a top-k), below that the original's ``torch.topk(−d, k=1, dim=0)``.
Exact ties need duplicate embedding rows (or several distances clamped to 0) in practice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_BYTES_ACCELERATOR",
    "nearest_tokens",
    "rounding_chunk_size",
    "make_rounding_fn",
]

#: Default budget for the float32 ``[V, n]`` intermediates (two live at once) on CPU: 16 MiB,
#: so that each block (about 68 positions × 30522 words, 8 MiB) stays in the last-level cache
#: through its passes (bench/bench_kernels.py times the rounding against the original's).
DEFAULT_MAX_BYTES = 16 * 2**20

#: Default budget on accelerators, where fewer, larger blocks mean fewer kernel launches.
DEFAULT_MAX_BYTES_ACCELERATOR = 1 * 2**30

#: Number of ``[V, n]`` float32 tensors alive at the same time inside one chunk (the products
#: ``E·xᵀ`` and the distances).
_LIVE_TENSORS = 2

#: From this vocabulary size on, CPU ``torch.topk(k=1)`` breaks exact ties towards the lowest
#: index (checked with torch 2.13; tested in tests/test_rounding.py), which is what the
#: documented ``argmin`` does; smaller vocabularies keep the original's ``topk`` call.
_TOPK_LOWEST_INDEX_MIN_V = 64


def rounding_chunk_size(
    vocab_size: int, num_positions: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> int:
    """Positions per chunk so that the ``[V, n]`` intermediates fit in ``max_bytes``.

    At least 1 (a single position always needs ``2·V·4`` bytes), at most ``num_positions``.
    """
    per_position = _LIVE_TENSORS * vocab_size * 4
    return max(1, min(num_positions, max_bytes // per_position))


def nearest_tokens(
    x: torch.Tensor,
    embedding: torch.Tensor,
    *,
    chunk_size: int | None = None,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """Index of the nearest embedding row (squared L2) for every position.

    Args:
        x: x̂_0 ``[B,L,h]`` (or ``[N,h]``).
        embedding: E ``[V,h]`` on any device; ``x`` is moved to it.
        chunk_size: positions per chunk; default from :func:`rounding_chunk_size`.
        max_bytes: memory budget used when ``chunk_size`` is None; default
            ``DEFAULT_MAX_BYTES`` on CPU, ``DEFAULT_MAX_BYTES_ACCELERATOR`` elsewhere.

    Returns:
        int64 ``x.shape[:-1]`` (``[B,L]``), on ``embedding``'s device.
    """
    E = embedding.detach()
    return _nearest(x, E, _squared_norms(E), chunk_size=chunk_size, max_bytes=max_bytes)


def _squared_norms(E: torch.Tensor) -> torch.Tensor:
    """``‖E_v‖²`` as the original computes it: ``[V, 1]``."""
    return (E**2).sum(-1).view(-1, 1)


def _nearest(
    x: torch.Tensor,
    E: torch.Tensor,
    emb_norm: torch.Tensor,
    *,
    chunk_size: int | None,
    max_bytes: int | None,
) -> torch.Tensor:
    flat = x.detach().reshape(-1, x.size(-1)).to(device=E.device, dtype=E.dtype)  # [N,h]
    n_total = flat.size(0)
    if chunk_size is None:
        if max_bytes is None:
            cpu = E.device.type == "cpu"
            max_bytes = DEFAULT_MAX_BYTES if cpu else DEFAULT_MAX_BYTES_ACCELERATOR
        chunk_size = rounding_chunk_size(E.size(0), n_total, max_bytes)
    tokens = torch.empty(n_total, dtype=torch.long, device=E.device)
    lowest_index_ties = E.size(0) >= _TOPK_LOWEST_INDEX_MIN_V
    for start in range(0, n_total, chunk_size):
        chunk = flat[start : start + chunk_size]  # [n,h]
        arr_norm = (chunk**2).sum(-1).view(1, -1)  # ‖x_n‖²  [1,n]
        cross = torch.mm(E, chunk.t())  # E_v·x_n  [V,n]
        # (‖E_v‖² + ‖x_n‖²) − 2·E_v·x_n: add_'s a + α·b with α = −2 (exact scaling) rounds
        # like the original's a − (2·b)
        dist = (emb_norm + arr_norm).add_(cross, alpha=-2.0)  # d_{v,n}  [V,n]
        del cross
        dist.clamp_(min=0.0)
        if lowest_index_ties:  # topk(−d) = argmin(d), ties to the lowest index: one pass
            tokens[start : start + chunk_size] = dist.argmin(dim=0)
        else:
            tokens[start : start + chunk_size] = torch.topk(dist.neg_(), k=1, dim=0).indices[0]
        del dist
    return tokens.view(x.shape[:-1])


def make_rounding_fn(
    embedding: torch.Tensor | torch.nn.Embedding,
    *,
    chunk_size: int | None = None,
    max_bytes: int | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A ``denoised_fn`` that rounds x̂_0 to the nearest word embeddings (docs/original.md §5.10).

    Args:
        embedding: E ``[V,h]`` (or an ``nn.Embedding``), normally the model's tied matrix
            (``lm_head.weight``, docs/original.md §4.6). Like the original decoder, the function keeps a
            frozen copy, so later changes to the model do not affect it.

    Returns:
        ``fn(x [B,L,h]) -> (E[tokens] [B,L,h] on x's device and dtype, tokens int64 [B,L])``.
    """
    weight = embedding.weight if isinstance(embedding, torch.nn.Embedding) else embedding
    weight = weight.detach().clone()
    emb_norm = _squared_norms(weight)  # computed once, reused at every sampling step

    def round_to_embeddings(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = _nearest(x, weight, emb_norm, chunk_size=chunk_size, max_bytes=max_bytes)
        rounded = F.embedding(tokens, weight).view(x.shape).to(device=x.device, dtype=x.dtype)
        return rounded, tokens.to(x.device)

    return round_to_embeddings
