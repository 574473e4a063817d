"""Sequence-to-sequence training loss of DiffuSeq v1/v2 (spec §5.6, §5.9; golden G5, G6).

Reimplements `training_losses_seq2seq` and `_token_discrete_loss` of the original
`diffuseq/gaussian_diffusion.py`, with the network passed in and every random draw injectable.
DiffuSeq paper (Gong et al., ICLR 2023) eq. 4 — the simplified VLB — is

    L = Σ_t ‖y_0 − f_θ(z_t, t)‖² + ‖EMB(w^y) − f_θ(z_1, 1)‖² + R(‖z_0‖²)
        (MSE term)                (t = 0 term)                (rounding / decoder NLL)

The code differs from the paper in ways that are reproduced here (spec §10.1 item 2): the MSE
runs over **all** positions (source, target, padding) against the σ0-noised ``z_0``, the
decoder NLL is unmasked and uses ``z_0`` (not the network output), and a prior term
``tT = mean((√ᾱ_{T−1}·z_0)²)`` is added.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from diffuseq.nn_utils import mean_flat

if TYPE_CHECKING:
    from diffuseq.diffusion import GaussianDiffusion

__all__ = ["training_losses", "token_nll", "linear_cross_entropy"]

# Logits blocks of `linear_cross_entropy` hold about 2**22 floats (16 MiB; rows x V forward,
# N x columns backward) instead of a full [B·L, V] fp32 tensor (1 GiB for the paper's
# B·L = 8192, V = 30522). Blocks under glibc's 32 MiB mmap threshold are reused from the heap
# instead of being page-faulted in afresh for every block.
_CHUNK_ELEMENTS = 1 << 22


def token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example token cross-entropy (the original's ``_token_discrete_loss``).

    Args:
        logits: ``[B,L,V]``; input_ids: w ``[B,L]``; mask: m ``[B,L]`` or None.

    Returns:
        ``[B]``: ``mean_L CE`` without mask, ``Σ_L m·CE / Σ_L m`` with mask.
    """
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), input_ids.reshape(-1), reduction="none"
    ).view(input_ids.shape)
    if mask is None:
        return nll.mean(dim=-1)
    return (nll * mask).sum(dim=-1) / mask.sum(dim=-1)


def _matmul_dtype(z: torch.Tensor) -> torch.dtype:
    """Dtype ``nn.Linear`` would compute in here: the autocast dtype if autocast is on."""
    device = z.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return z.dtype


def _row_cross_entropy(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
    dtype: torch.dtype, with_lse: bool = False,
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


def _token_losses(
    text_model, x_start: torch.Tensor, model_output: torch.Tensor, input_ids: torch.Tensor,
    input_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder_nll`` (spec §5.6 step 7, with gradients) and the logged ``nll`` (step 9, no grad).

    Models that expose ``logits_projection() -> (E, b)`` (``get_logits(z) = z·Eᵀ + b``) get the
    chunked :func:`linear_cross_entropy`; others go through ``get_logits`` and full logits.
    """
    projection = getattr(text_model, "logits_projection", None)
    if projection is None:
        decoder_nll = token_nll(text_model.get_logits(x_start), input_ids)
        with torch.no_grad():
            nll = token_nll(text_model.get_logits(model_output), input_ids, mask=input_mask)
        return decoder_nll, nll
    weight, bias = projection()
    decoder_nll = linear_cross_entropy(x_start, weight, bias, input_ids).mean(dim=-1)
    with torch.no_grad():
        # Only positions with m != 0 enter the masked mean; the others stay 0.
        keep = (input_mask != 0).reshape(-1)
        flat = torch.zeros(keep.shape, dtype=torch.float32, device=input_ids.device)
        flat[keep] = linear_cross_entropy(
            model_output.reshape(-1, model_output.shape[-1])[keep], weight, bias, input_ids.reshape(-1)[keep]
        )
        token = flat.view(input_ids.shape)
        nll = (token * input_mask).sum(dim=-1) / input_mask.sum(dim=-1)
    return decoder_nll, nll


def training_losses(
    diffusion: GaussianDiffusion,
    model,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    t: torch.Tensor,
    *,
    text_model=None,
    noise0: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    bernoulli_draw: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example loss terms for a batch (spec §5.6 steps 1–9).

    1. ``x̄_0 = EMB(w)`` (``text_model.get_embeds``; gradients flow into E);
    2. ``z_0 = x̄_0 + √(1−ᾱ_0)·ε_0`` (paper §3, embedding step);
    3. ``z_t = q_sample(z_0, t, ε, mask=m, μ)`` — partial noising (paper eq. 2), v2 with μ and
       discrete noise;
    4. ``f = model(z_t, scale_timesteps(t))`` (x_0 prediction);
    5. ``mse = mean_{L,h}(z_0 − f)²``, replaced where ``t == 0`` by
       ``t0_loss = mean_{L,h}(x̄_0 − f)²`` (paper eq. 4, t = 0 term);
    6. ``tT_loss = mean_{L,h}(√ᾱ_{T−1}·z_0)²`` (prior term at t = T);
    7. ``decoder_nll = mean_L CE(get_logits(z_0), w)`` (paper eq. 4 rounding term
       −log p_θ(w | z_0), unmasked);
    8. ``loss = mse + (decoder_nll + tT_loss)`` (v2 with μ: ``+ reg_rate·‖μ‖₂``);
    9. ``nll = Σ_L m·CE(get_logits(f), w) / Σ_L m`` — logged only (computed without autograd,
       and only at positions with ``m != 0``).

    Steps 7 and 9 never hold a ``[B, L, V]`` tensor when the model has ``logits_projection``
    (:func:`linear_cross_entropy`): for the paper's configuration that saves about 4 GiB of
    peak memory per micro-batch at ``seq_len`` 128 and the time spent writing and reading it.

    Random draws happen in the original's order (ε_0, ε, Bernoulli) from ``generator``
    unless injected.

    Args:
        diffusion: the :class:`~diffuseq.diffusion.GaussianDiffusion`.
        model: the forward network ``model(x [B,L,h], timesteps float32 [B])`` (may be DDP).
        input_ids: w int64 ``[B,L]``; input_mask: m ``[B,L]`` (0 = source); t: int64 ``[B]``.
        text_model: the unwrapped model giving ``get_embeds``, ``get_logits`` and the optional
            ``mean_embed`` μ ``[h]`` (default: ``model``).
        noise0, noise: ε_0, ε ``[B,L,h]``; bernoulli_draw: 0/1 ``[B,L]`` (v2 ``denoise``).

    Returns:
        dict of float32 ``[B]`` tensors ``loss, mse, nll, decoder_nll, tT_loss, t0_loss``, plus
        the 0-dim ``reg_term`` when the model has μ. Only ``loss`` is optimised.

    Raises:
        ValueError: ``diffusion.denoise`` is on but the model has no ``mean_embed`` (the
            original crashes, spec §10.2 item 8).
    """
    text_model = model if text_model is None else text_model
    mean_embed = getattr(text_model, "mean_embed", None)
    if diffusion.denoise and mean_embed is None:
        raise ValueError(
            "denoise=True (v2 discrete noise) needs a model with a learned mean embedding "
            "(learned_mean_embed=True); the model has no mean_embed"
        )
    x_start_mean = text_model.get_embeds(input_ids)
    if noise0 is None:
        noise0 = torch.randn(x_start_mean.shape, generator=generator, dtype=x_start_mean.dtype,
                             device=x_start_mean.device)
    x_start = diffusion.get_x_start(x_start_mean, noise0=noise0)
    if noise is None:
        noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype,
                            device=x_start.device)
    x_t = diffusion.q_sample(x_start, t, noise=noise, mask=input_mask, mean_embed=mean_embed,
                             bernoulli_draw=bernoulli_draw, generator=generator)
    model_output = model(x_t, diffusion.scale_timesteps(t))
    assert model_output.shape == x_start.shape

    t0_loss = mean_flat((x_start_mean - model_output) ** 2)
    mse = torch.where(t == 0, t0_loss, mean_flat((x_start - model_output) ** 2))
    last = torch.full((1,), diffusion.num_timesteps - 1, dtype=torch.long, device=x_start.device)
    prior_mean, _, _ = diffusion.q_mean_variance(x_start, last)
    tT_loss = mean_flat(prior_mean**2)
    decoder_nll, nll = _token_losses(text_model, x_start, model_output, input_ids, input_mask)
    terms = {
        "loss": mse + (decoder_nll + tT_loss),
        "mse": mse,
        "nll": nll,
        "decoder_nll": decoder_nll,
        "tT_loss": tT_loss,
        "t0_loss": t0_loss,
    }
    if mean_embed is not None:
        terms["reg_term"] = diffusion.reg_rate * torch.norm(mean_embed)
        terms["loss"] = terms["loss"] + terms["reg_term"]
    return terms
