"""Nearest-embedding rounding: correctness, chunking, memory budget and tie-breaking."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffuseq.sampling.rounding import (
    DEFAULT_MAX_BYTES,
    make_rounding_fn,
    nearest_tokens,
    rounding_chunk_size,
)


def _original_formula(x: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """The original's one-shot computation: ‖E‖² + ‖x‖²ᵀ − 2·E·xᵀ, clamp ≥ 0, top-1 of −d."""
    flat = x.reshape(-1, x.size(-1))
    emb_norm, arr_norm = (E**2).sum(-1).view(-1, 1), (flat**2).sum(-1).view(-1, 1)
    dist = emb_norm + arr_norm.t() - 2.0 * torch.mm(E, flat.t())
    dist = torch.clamp(dist, 0.0, float("inf"))
    return torch.topk(-dist, k=1, dim=0).indices[0].view(x.shape[:-1])


def test_equals_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(500, 16, generator=g)
    x = torch.randn(6, 40, 16, generator=g) * 1.5
    tokens = nearest_tokens(x, E)
    brute = torch.cdist(x.double().reshape(-1, 16), E.double()).argmin(dim=1).view(6, 40)
    assert tokens.dtype == torch.long and tokens.shape == (6, 40)
    assert torch.equal(tokens, brute)
    assert torch.equal(tokens, _original_formula(x, E))


def test_bert_size_vocabulary_gives_the_original_tokens():
    """At the paper's size (V = 30522, h = 128) the cache-sized blocks, the fused
    ``a + (−2)·b`` and ``argmin`` give the original one-shot ``topk`` tokens, position by
    position, also for positions far from every embedding (distances near each other)."""
    g = torch.Generator().manual_seed(4)
    E = torch.randn(30522, 128, generator=g) * 0.3
    near = E[torch.randint(0, 30522, (3, 50), generator=g)] + 0.2 * torch.randn(
        3, 50, 128, generator=g
    )
    far = torch.randn(3, 50, 128, generator=g) * 3.0
    for x in (near, far):
        assert torch.equal(nearest_tokens(x, E), _original_formula(x, E))


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(300, 8, generator=g)
    x = torch.randn(5, 17, 8, generator=g)
    full = nearest_tokens(x, E, chunk_size=5 * 17)
    for chunk in (1, 7, 16, 84, 1000):
        assert torch.equal(nearest_tokens(x, E, chunk_size=chunk), full)
    three_positions = 300 * 4 * 2 * 3  # bytes of two [V, 3] float32 blocks
    assert torch.equal(nearest_tokens(x, E, max_bytes=three_positions), full)


def test_chunk_size_respects_budget():
    assert rounding_chunk_size(30522, 64 * 128) == DEFAULT_MAX_BYTES // (2 * 4 * 30522)
    assert rounding_chunk_size(30522, 10) == 10
    assert rounding_chunk_size(10**9, 10, max_bytes=1) == 1


class _LargestTensor(TorchDispatchMode):
    """Records the byte size of the largest tensor any aten op returns, except tensors of the
    embedding's own shape ``[V, h]`` (``E**2`` for the row norms is O(V·h) like E itself)."""

    def __init__(self, embedding_shape):
        super().__init__()
        self.embedding_shape = tuple(embedding_shape)
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and tuple(value.shape) != self.embedding_shape:
                self.largest = max(self.largest, value.numel() * value.element_size())
        return out


def test_big_vocab_stays_within_memory_budget():
    """BERT-size vocabulary (30522 × 128): a one-shot [V, B·L] matrix for 2 × 128 positions
    would be 31 MB; with a 2 MiB budget no intermediate may exceed 2 MiB (the default budget
    bounds a 64 × 128 batch the same way), and the tokens equal those of another chunking."""
    g = torch.Generator().manual_seed(2)
    E = torch.randn(30522, 128, generator=g)
    tokens_true = torch.randint(0, 30522, (2, 128), generator=g)
    x = E[tokens_true] + 0.3 * torch.randn(2, 128, 128, generator=g)
    budget = 2 * 2**20
    with _LargestTensor(E.shape) as probe:
        tokens = nearest_tokens(x, E, max_bytes=budget)
    chunk = rounding_chunk_size(30522, 256, budget)
    assert probe.largest == 30522 * chunk * 4 <= budget  # the [V, n] distance blocks
    assert torch.equal(tokens, tokens_true)
    assert torch.equal(tokens, nearest_tokens(x, E, chunk_size=61))


@pytest.mark.parametrize("vocab_size", [3, 10, 63, 64, 200])
def test_ties_follow_the_original_topk(vocab_size):
    """Duplicate rows create exact ties; torch.topk's choice among tied rows is undocumented and
    depends on V on CPU, so the result must equal the original one-shot topk, not argmin."""
    g = torch.Generator().manual_seed(vocab_size)
    E = torch.randn(vocab_size, 4, generator=g)
    E[vocab_size // 2 :] = E[: vocab_size - vocab_size // 2].clone()  # second half = first half
    x = E[torch.randint(0, vocab_size, (3, 9), generator=g)]
    assert torch.equal(nearest_tokens(x, E, chunk_size=2), _original_formula(x, E))


def test_make_rounding_fn_returns_embeddings_and_tokens():
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.Embedding(20, 6)
    x = torch.randn(2, 5, 6, generator=g)
    fn = make_rounding_fn(emb)
    rounded, tokens = fn(x)
    assert rounded.shape == x.shape and tokens.shape == (2, 5)
    assert torch.equal(rounded, emb.weight.detach()[tokens])
    assert not rounded.requires_grad
    assert torch.equal(tokens, nearest_tokens(x, emb.weight))
    # x already on the embedding rows: rounding is the identity.
    again, same = fn(rounded)
    assert torch.equal(same, tokens) and torch.equal(again, rounded)
