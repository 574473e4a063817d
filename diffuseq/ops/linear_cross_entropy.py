"""Chunked linear cross-entropy: ``CE(z·Wᵀ + b, w)`` without materialising ``[N, V]`` logits.

Why it exists: the decoder NLL term of the DiffuSeq loss (docs/original.md §5.6 step 7) reads
out every position through the tied ``[V, h]`` embedding matrix. Through full logits that is
several ``[B·L, V]`` float32 tensors in the autograd graph (about 4 GiB of peak memory per
micro-batch for the paper's configuration, B·L = 8192, V = 30522) and the time to write and read
them. This kernel computes the same values block by block, forward and backward.

Tested in tests/test_losses.py (values and gradients against ``F.cross_entropy(F.linear(...))``)
and measured in bench/bench_kernels.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["linear_cross_entropy"]

# Logits blocks of `linear_cross_entropy` hold about 2**22 floats (16 MiB; rows x V forward,
# N x columns backward) instead of a full [B·L, V] fp32 tensor (1 GiB for the paper's
# B·L = 8192, V = 30522). Blocks under glibc's 32 MiB mmap threshold are reused from the heap
# instead of being page-faulted in afresh for every block.
_CHUNK_ELEMENTS = 1 << 22


def _matmul_dtype(z: torch.Tensor) -> torch.dtype:
    """Dtype ``nn.Linear`` would compute in here: the autocast dtype if autocast is on."""
    device = z.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return z.dtype


def _row_cross_entropy(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    dtype: torch.dtype,
    with_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``CE(z·Wᵀ + b, target)`` per row (float32 ``[N]``), a block of rows at a time.

    Each block goes through the ops of ``F.cross_entropy(F.linear(z, W, b), target)``
    (log-softmax, then the target entry), so every row gets the unchunked value (up to the
    GEMM's rounding, which a BLAS may vary with the block height by a few ulp). With
    ``with_lse`` also returns the row statistics of the log-softmax, float32 ``[2, N]``: the
    logits' maximum ``m`` and ``log Σ exp(x − m)`` (so that ``softmax = exp((x − m) − that)``
    is the log-softmax's own rounding).
    """
    n = z.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=z.device)
    lse = torch.empty(2, n, dtype=torch.float32, device=z.device) if with_lse else None
    w = weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    step = max(1, _CHUNK_ELEMENTS // max(1, weight.shape[0]))
    for start in range(0, n, step):
        rows = slice(start, start + step)
        logits = F.linear(z[rows].to(dtype), w, b).float()  # [c, V]
        logp = torch.log_softmax(logits, dim=-1)
        out[rows] = -logp.gather(1, target[rows, None]).squeeze(1)
        if with_lse:
            lse[0, rows] = logits.amax(dim=-1)
            lse[1, rows] = logp.amax(dim=-1).neg_()  # log-softmax at the argmax is exactly −log Σ
    return out, lse


#: log of the smallest normal float32 (about −87.34): exp below it gives a denormal.
_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)


def _softmax_from_log(logp: torch.Tensor) -> torch.Tensor:
    """``exp(logp)`` in place, with entries below the smallest normal float32 set to 0.

    Those entries (probabilities under 1.2e-38, common for a 30522-word softmax) would be
    denormals, which CPU ``exp`` computes about 20× slower than normal values; every other
    entry is bit-identical to ``exp(logp)``.
    """
    tiny = logp < _LOG_TINY
    return logp.masked_fill_(tiny, 0.0).exp_().masked_fill_(tiny, 0.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """Row-wise ``CE(z·Wᵀ + b, target)`` whose autograd graph holds no ``[N, V]`` tensor.

    Forward keeps the inputs and the row log-normalisers ``[2, N]``. Backward recomputes the
    logits a block of vocabulary columns at a time, ``G = g·(softmax − onehot)`` ``[N, c]``,
    and accumulates ``∂z += G·W_c`` while writing ``∂W_c = Gᵀ·z`` and ``∂b_c = Σ_rows G`` once
    (one extra ``[N, h] × [h, V]`` product compared with autograd through full logits).
    """

    @staticmethod
    def forward(ctx, z, weight, bias, target, dtype):  # noqa: D102
        out, lse = _row_cross_entropy(z, weight, bias, target, dtype, with_lse=True)
        ctx.save_for_backward(z, weight, bias, target, lse)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        z, weight, bias, target, lse = ctx.saved_tensors
        dtype = ctx.dtype
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        n, vocab = z.shape[0], weight.shape[0]
        g = grad_out.float()  # [N]
        zd = z.to(dtype)
        grad_z = torch.zeros(z.shape, dtype=torch.float32, device=z.device) if need_z else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=z.device) if need_w else None
        grad_b = torch.empty(vocab, dtype=torch.float32, device=z.device) if need_b else None
        step = max(1, _CHUNK_ELEMENTS // max(1, n))
        for start in range(0, vocab, step):
            cols = slice(start, start + step)
            w = weight[cols].to(dtype)  # [c, h]
            b = None if bias is None else bias[cols].to(dtype)
            logp = F.linear(zd, w, b).float().sub_(lse[0, :, None]).sub_(lse[1, :, None])  # [N, c]
            grad = _softmax_from_log(logp)  # softmax [N, c]
            hit = ((target >= start) & (target < start + w.shape[0])).nonzero().squeeze(1)
            grad[hit, target[hit] - start] -= 1.0
            grad.mul_(g[:, None])
            gd = grad.to(dtype)
            if need_z:
                if dtype == torch.float32:
                    grad_z.addmm_(gd, w)  # [N, h] += [N, c] @ [c, h]
                else:
                    grad_z += (gd @ w).float()
            if need_w:
                grad_w[cols] = gd.t() @ zd  # [c, h]
            if need_b:
                grad_b[cols] = grad.sum(dim=0)
        return (
            grad_z.to(z.dtype) if need_z else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
        )


def linear_cross_entropy(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> torch.Tensor:
    """Token cross-entropy of a linear read-out, ``CE(z·Wᵀ + b, target)``, without ``[..., V]`` logits.

    Same values as ``F.cross_entropy(F.linear(z, W, b), target, reduction="none")`` (row by row
    the same ops), differentiable in ``z``, ``W`` and ``b``; memory ``O(chunk·V)`` instead of
    several ``[N, V]`` tensors. Under autocast the products run in the autocast dtype, as
    ``nn.Linear`` would.

    Args:
        z: ``[..., h]``; weight: ``[V, h]``; bias: ``[V]`` or None; target: int64 ``[...]``.

    Returns:
        float32 ``[...]`` (the shape of ``target``).
    """
    flat_z = z.reshape(-1, z.shape[-1])
    flat_t = target.reshape(-1)
    dtype = _matmul_dtype(z)
    with torch.autocast(z.device.type, enabled=False):
        if torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (z, weight, bias)
        ):
            ce = _LinearCrossEntropy.apply(flat_z, weight, bias, flat_t, dtype)
        else:
            ce, _ = _row_cross_entropy(flat_z, weight, bias, flat_t, dtype)
    return ce.view(target.shape)
