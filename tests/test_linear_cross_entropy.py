"""The chunked token cross-entropy of a linear read-out (`linear_cross_entropy`) against
``F.cross_entropy(F.linear(z, W, b))`` with autograd through full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import diffuseq.ops.linear_cross_entropy as lce
from diffuseq.ops.linear_cross_entropy import linear_cross_entropy


def _inputs(spread: float, n: int = 37, h: int = 8, vocab: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, h, generator=g) * spread).requires_grad_()
    weight = torch.randn(vocab, h, generator=g).requires_grad_()
    bias = (torch.randn(vocab, generator=g) * 0.1).requires_grad_()
    target = torch.randint(0, vocab, (n,), generator=g)
    return z, weight, bias, target


def _grads(ce: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    # per-row weights, so that every row's gradient is scaled differently
    return torch.autograd.grad((ce * torch.linspace(0.5, 1.5, ce.numel())).sum(), params)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 1000, 1])
@pytest.mark.parametrize("spread", [1.0, 12.0], ids=["normal", "denormal-softmax"])
def test_values_and_gradients_equal_full_logits(monkeypatch, chunk_elements, spread):
    """Values equal row by row (bit-identical with a single block; other block heights may change
    the GEMM's rounding by a few ulp), gradients equal to autograd's, for one block, several
    blocks and one row/column per block; ``spread = 12`` makes logits spread over hundreds of
    nats, so that many softmax entries are below the smallest normal float32 (they are taken
    as 0 instead of denormals)."""
    monkeypatch.setattr(lce, "_CHUNK_ELEMENTS", chunk_elements)
    z, weight, bias, target = _inputs(spread)
    full_logits = F.linear(z, weight, bias)
    if spread > 1:
        logp = torch.log_softmax(full_logits.detach(), dim=-1)
        assert (logp < math.log(torch.finfo(torch.float32).tiny)).float().mean() > 0.2
    reference = F.cross_entropy(full_logits, target, reduction="none")
    ours = linear_cross_entropy(z, weight, bias, target)
    if chunk_elements >= z.shape[0] * weight.shape[0]:
        assert torch.equal(ours, reference)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(ours, z, weight, bias), _grads(reference, z, weight, bias)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=3e-5)  # summation order


def test_batched_shapes_and_no_grad():
    z, weight, bias, target = _inputs(1.0, n=24)
    ours = linear_cross_entropy(z.view(4, 6, -1), weight, bias, target.view(4, 6))
    assert ours.shape == (4, 6)
    with torch.no_grad():
        again = linear_cross_entropy(z.view(4, 6, -1), weight, None, target.view(4, 6))
    expected = F.cross_entropy(F.linear(z, weight), target, reduction="none").view(4, 6)
    assert torch.equal(again, expected) and not again.requires_grad


def test_bf16_autocast_runs_the_products_in_bf16():
    """Under CPU autocast the read-out runs in bf16 as ``nn.Linear`` would; the softmax and the
    loss stay float32."""
    z, weight, bias, target = _inputs(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(z, weight, bias, target)
        logits = F.linear(z, weight, bias)
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    reference = F.cross_entropy(logits.float(), target, reduction="none")
    assert torch.equal(ours, reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads = _grads(linear_cross_entropy(z, weight, bias, target), z, weight, bias)
    for got, want in zip(grads, _grads(reference, z, weight, bias)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
