"""Memory-lean training forward of a transformers ``BertLayer`` (CPU; fp32 or bf16 autocast).

Why it exists: on CPU, training the paper's configuration is bound by memory traffic as much as
by FLOPs, and transformers' eager ``BertLayer`` keeps about 21–24 activations of size
``[B, L, H]`` per layer for backward. This forward keeps 13, with bit-identical numbers (same
modules, parameters, operations and random draws in the same order). Used by
:class:`diffuseq.models.denoiser.TransformerNetModel` in training mode for large activations only; tested
against the eager layers in tests/test_model_lean.py, measured in bench/bench_train.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LEAN_MIN_ELEMENTS", "lean_bert_layer"]


# ---------------------------------------------------------------------------------------------
# Memory-lean training forward of the BERT encoder (CPU; fp32 or bf16 autocast).
#
# Same modules, parameters, operations and random draws, in the same order, as transformers'
# eager ``BertLayer`` (so the same seed gives the same dropout masks and the same numbers, also
# under CPU autocast: forward and backward run under the caller's autocast state), but
# the autograd graph holds less: the dropout masks as 1-byte booleans instead of float noise
# tensors, no ``[B, heads, L, L]`` attention probabilities (recomputed in backward from Q and
# K, an extra ~1% of the layer's FLOPs) and no GELU output (recomputed from its input). For the
# paper's configuration this cuts the saved activations per layer from about 21 to 13 tensors of
# size [B, L, 768] at seq_len 64, and from about 24 to 13 at seq_len 128.


#: Smallest ``[B, L, H]`` activation (elements) for which training uses the lean forward: 2**21
#: (8 MiB in fp32; the paper's 64 × 64 × 768 is 3.1 M).
LEAN_MIN_ELEMENTS = 1 << 21


def _dropout_scale(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1/(1-p)`` rounded exactly as ATen's dropout computes its noise (``noise.div_(1-p)``)."""
    return torch.ones((), dtype=dtype, device=device).div_(1 - p)


def _dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """The keep-mask of ATen's CPU dropout, drawn directly as booleans.

    ATen draws ``noise = bernoulli(1-p)`` in ``like``'s dtype, then ``noise /= 1-p`` and
    ``x * noise``; a boolean ``bernoulli_`` consumes the generator identically and gives the
    same mask (checked for fp32 and bf16), and ``(x * mask) * (1/(1-p))`` equals ``x * noise``
    bit for bit. The boolean draw is about twice as fast and needs no conversion.
    """
    return torch.empty(like.shape, dtype=torch.bool, device=like.device).bernoulli_(1 - p)


def _apply_mask(
    x: torch.Tensor, keep: torch.Tensor, p: float, inplace: bool = False
) -> torch.Tensor:
    """``x * noise`` of ATen's dropout from the boolean mask: ``x·(1/(1-p))`` where kept, 0 where
    dropped.

    Kept entries are bit-identical to ATen's ``x * noise`` (``x·1·s == x·s``); dropped ones are
    +0 where ATen gives ±0. A ``masked_fill_`` instead of ``x * keep``, because multiplying by a
    boolean tensor first converts the whole mask to ``x``'s dtype (a full-size copy).
    """
    scale = _dropout_scale(p, x.dtype, x.device)
    scaled = x.mul_(scale) if inplace else x * scale
    return scaled.masked_fill_(keep.logical_not(), 0)


_fwd = torch.amp.custom_fwd(device_type="cpu")
_bwd = torch.amp.custom_bwd(device_type="cpu")


def _attention_probs(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """``softmax(q·kᵀ·scaling)`` as eager attention computes it (the in-place scaling gives the
    same values as its out-of-place ``* scaling``)."""
    return torch.softmax(torch.matmul(q, k.transpose(2, 3)).mul_(scaling), dim=-1)


class _DropoutAttention(torch.autograd.Function):
    """``dropout(softmax(q·kᵀ·scaling))·v`` saving q, k, v and a boolean mask only."""

    @staticmethod
    @_fwd
    def forward(ctx, q, k, v, p, scaling):  # noqa: D102
        probs = _attention_probs(q, k, scaling)  # [B, n, L, L]
        keep = None
        if p > 0:
            keep = _dropout_mask(probs, p)
            _apply_mask(probs, keep, p, inplace=True)
        ctx.save_for_backward(q, k, v, keep)
        ctx.p, ctx.scaling = p, scaling
        return torch.matmul(probs, v)  # [B, n, L, d]

    @staticmethod
    @_bwd
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, keep = ctx.saved_tensors
        probs = _attention_probs(q, k, ctx.scaling)
        dropped = probs if keep is None else _apply_mask(probs, keep, ctx.p)
        grad_v = torch.matmul(dropped.transpose(2, 3), grad_out)
        del dropped
        grad_probs = torch.matmul(grad_out, v.transpose(2, 3))
        if keep is not None:
            _apply_mask(grad_probs, keep, ctx.p, inplace=True)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs, probs
        grad_scores.mul_(ctx.scaling)
        return (
            torch.matmul(grad_scores, k),
            torch.matmul(grad_scores.transpose(2, 3), q),
            grad_v,
            None,
            None,
        )


class _DropoutAdd(torch.autograd.Function):
    """``dropout(y) + residual`` saving a boolean mask instead of the float noise."""

    @staticmethod
    @_fwd
    def forward(ctx, y, residual, p):  # noqa: D102
        keep = _dropout_mask(y, p)
        ctx.save_for_backward(keep)
        ctx.p, ctx.dtypes = p, (y.dtype, residual.dtype)
        dropped = _apply_mask(y, keep, p)
        # in place only without type promotion (under autocast y is bf16, the residual fp32)
        return dropped.add_(residual) if y.dtype == residual.dtype else dropped + residual

    @staticmethod
    @_bwd
    def backward(ctx, grad):  # noqa: D102
        (keep,) = ctx.saved_tensors
        y_dtype, residual_dtype = ctx.dtypes
        grad_y = _apply_mask(grad.to(y_dtype), keep, ctx.p)  # the mul ran in y's dtype
        return grad_y, grad.to(residual_dtype), None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(u), W, b)`` saving ``u`` only (the GELU output is recomputed)."""

    @staticmethod
    @_fwd
    def forward(ctx, u, weight, bias):  # noqa: D102
        ctx.save_for_backward(u, weight, bias)
        return F.linear(F.gelu(u), weight, bias)

    @staticmethod
    @_bwd
    def backward(ctx, grad):  # noqa: D102
        u, weight, bias = ctx.saved_tensors
        dtype = grad.dtype  # the linear's compute dtype (bf16 under autocast)
        grad2 = grad.reshape(-1, grad.shape[-1])  # [N, H]
        grad_u = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_g = grad2.mm(weight.to(dtype)).view(u.shape).to(u.dtype)
            grad_u = torch.ops.aten.gelu_backward(grad_g, u)
        if ctx.needs_input_grad[1]:
            grad_w = (
                grad2.t().mm(F.gelu(u).reshape(-1, u.shape[-1]).to(dtype)).to(weight.dtype)
            )  # [H, I]
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0).to(bias.dtype)
        return grad_u, grad_w, grad_b


def _dropout_add(y: torch.Tensor, residual: torch.Tensor, p: float) -> torch.Tensor:
    return _DropoutAdd.apply(y, residual, p) if p > 0 else y + residual


def lean_bert_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One transformers ``BertLayer`` in training mode, without attention mask: ``[B,L,H] -> [B,L,H]``."""
    attn, attn_out = layer.attention.self, layer.attention.output
    heads = (*x.shape[:-1], -1, attn.attention_head_size)
    q = attn.query(x).view(heads).transpose(1, 2)  # [B, n, L, d]
    k = attn.key(x).view(heads).transpose(1, 2)
    v = attn.value(x).view(heads).transpose(1, 2)
    context = _DropoutAttention.apply(q, k, v, attn.dropout.p, attn.scaling)
    context = context.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1)  # [B, L, H]
    h = attn_out.LayerNorm(_dropout_add(attn_out.dense(context), x, attn_out.dropout.p))
    out = layer.output
    y = _GeluLinear.apply(layer.intermediate.dense(h), out.dense.weight, out.dense.bias)
    return out.LayerNorm(_dropout_add(y, h, out.dropout.p))
