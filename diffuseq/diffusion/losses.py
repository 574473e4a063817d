"""Sequence-to-sequence training loss of DiffuSeq v1/v2 (docs/original.md §5.6, §5.9; golden G5, G6).

Reimplements `training_losses_seq2seq` and `_token_discrete_loss` of the original
`diffuseq/gaussian_diffusion.py`, with the network passed in and every random draw injectable.
DiffuSeq paper (Gong et al., ICLR 2023) eq. 4 — the simplified VLB — is

    L = Σ_t ‖y_0 − f_θ(z_t, t)‖² + ‖EMB(w^y) − f_θ(z_1, 1)‖² + R(‖z_0‖²)
        (MSE term)                (t = 0 term)                (rounding / decoder NLL)

The code differs from the paper in ways that are reproduced here (docs/original.md §10.1 item 2): the MSE
runs over **all** positions (source, target, padding) against the σ0-noised ``z_0``, the
decoder NLL is unmasked and uses ``z_0`` (not the network output), and a prior term
``tT = mean((√ᾱ_{T−1}·z_0)²)`` is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from diffuseq.diffusion.length import length_losses, span_mask
from diffuseq.models.nn_utils import mean_flat
from diffuseq.ops.linear_cross_entropy import linear_cross_entropy

if TYPE_CHECKING:
    from diffuseq.diffusion.gaussian import GaussianDiffusion

__all__ = ["self_condition", "training_losses", "token_nll"]


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


def _token_losses(
    text_model,
    x_start: torch.Tensor,
    model_output: torch.Tensor,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    *,
    anchor: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder_nll`` (docs/original.md §5.6 step 7, with gradients) and the masked ``nll`` of
    the prediction (step 9: logged only, no grad; with gradients when ``anchor``: Difformer's
    anchor loss).

    Models that expose ``logits_projection() -> (E, b)`` (``get_logits(z) = z·Eᵀ + b``) get the
    chunked :func:`linear_cross_entropy`; others go through ``get_logits`` and full logits.
    """
    projection = getattr(text_model, "logits_projection", None)
    if projection is None:
        decoder_nll = token_nll(text_model.get_logits(x_start), input_ids)
        with torch.set_grad_enabled(anchor and torch.is_grad_enabled()):
            nll = token_nll(text_model.get_logits(model_output), input_ids, mask=input_mask)
        return decoder_nll, nll
    weight, bias = projection()
    decoder_nll = linear_cross_entropy(x_start, weight, bias, input_ids).mean(dim=-1)
    with torch.set_grad_enabled(anchor and torch.is_grad_enabled()):
        # Only positions with m != 0 enter the masked mean; the others stay 0.
        keep = (input_mask != 0).reshape(-1)
        flat = torch.zeros(keep.shape, dtype=torch.float32, device=input_ids.device)
        flat[keep] = linear_cross_entropy(  # index_put_ records the gradient when anchor
            model_output.reshape(-1, model_output.shape[-1])[keep],
            weight,
            bias,
            input_ids.reshape(-1)[keep],
        )
        token = flat.view(input_ids.shape)
        nll = (token * input_mask).sum(dim=-1) / input_mask.sum(dim=-1)
    return decoder_nll, nll


def self_condition(
    model, x_t: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """The self-condition of a training forward (Chen, Zhang & Hinton 2022, Analog Bits §3.3).

    For each example, with probability ½ a first forward without gradient gives
    ``x̂_0 = f_θ(z_t, t, 0)``, used as the self-condition; otherwise zeros (the model learns both
    cases). ``model`` is the unwrapped network: the first pass needs no DDP hooks, and every rank
    runs it whatever its draws, so ranks stay in step. One uniform draw ``[B]`` from ``generator`` after the loss's other draws, so runs
    without self-conditioning consume the same random numbers as the original.

    Returns:
        ``[B, L, h]``, detached.
    """
    use = torch.rand(x_t.shape[0], generator=generator, device=x_t.device) < 0.5  # [B]
    with torch.no_grad():
        estimate = model(x_t, timesteps, self_cond=torch.zeros_like(x_t))
    return torch.where(use[:, None, None], estimate.to(x_t.dtype), torch.zeros_like(x_t)).detach()


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
    anchor_loss: bool = False,
    length_loss_weight: float | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example loss terms for a batch (docs/original.md §5.6 steps 1–9).

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
       and only at positions with ``m != 0``);
    10. ``anchor_loss`` (beyond the original; Difformer, Gao et al. 2022, arXiv 2212.09412,
        "anchor loss"): the same ``nll`` of the prediction f = x̂_0, with gradients, is added
        to ``loss``. Unlike step 7, whose z_0 is the noised ground-truth embedding (so the
        read-out can be satisfied by spreading the embeddings), it trains the read-out of
        what the denoiser predicts, which anchors the learnable embedding space against
        collapse. Masked as ``nll`` (target span and padding, ``m = 1``).
    11. ``length_loss`` (beyond the original; Difformer §3, ``--length_predict``): first the
        mask is restricted to the target span, ``m' = m·[w ≠ PAD]``
        (:func:`~diffuseq.diffusion.length.span_mask`), so every step above keeps the padding
        clean like the source; then ``CE(text_model.length_logits(w, m), n)`` with
        ``n = Σ_L m'`` is logged and ``λ·`` it added to ``loss``.

    Steps 7 and 9 never hold a ``[B, L, V]`` tensor when the model has ``logits_projection``
    (:func:`linear_cross_entropy`): for the paper's configuration that saves about 4 GiB of
    peak memory per micro-batch at ``seq_len`` 128 and the time spent writing and reading it.

    Random draws happen in the original's order (ε_0, ε, Bernoulli) from ``generator``
    unless injected. A model built with ``self_cond=True`` gets its self-condition from
    :func:`self_condition` in step 4 (one more draw, and a first no-grad forward).

    Args:
        diffusion: the :class:`~diffuseq.diffusion.GaussianDiffusion`.
        model: the forward network ``model(x [B,L,h], timesteps float32 [B])`` (may be DDP).
        input_ids: w int64 ``[B,L]``; input_mask: m ``[B,L]`` (0 = source); t: int64 ``[B]``.
        text_model: the unwrapped model giving ``get_embeds``, ``get_logits`` and the optional
            ``mean_embed`` μ ``[h]`` (default: ``model``).
        noise0, noise: ε_0, ε ``[B,L,h]``; bernoulli_draw: 0/1 ``[B,L]`` (v2 ``denoise``).
        anchor_loss: add step 10 (``--anchor_loss``); off, every term is the original's.
        length_loss_weight: λ of step 11 (``--length_predict``; ``text_model`` then needs
            ``length_logits`` and ``pad_token_id``); ``None``: off.

    Returns:
        dict of float32 ``[B]`` tensors ``loss, mse, nll, decoder_nll, tT_loss, t0_loss`` (and
        ``anchor_loss`` / ``length_loss`` when on), plus the 0-dim ``reg_term`` when the model has μ. Only
        ``loss`` is optimised.

    Raises:
        ValueError: ``diffusion.denoise`` is on but the model has no ``mean_embed`` (the
            original crashes, docs/original.md §10.2 item 8).
    """
    text_model = model if text_model is None else text_model
    mean_embed = getattr(text_model, "mean_embed", None)
    if diffusion.denoise and mean_embed is None:
        raise ValueError(
            "denoise=True (v2 discrete noise) needs a model with a learned mean embedding "
            "(learned_mean_embed=True); the model has no mean_embed"
        )
    if length_loss_weight is not None:
        pad = getattr(text_model, "pad_token_id", None)
        if pad is None or getattr(text_model, "length_head", None) is None:
            raise ValueError(
                "the length loss needs a model with a length head (length_predict=True) and "
                "the tokenizer's pad_token_id"
            )
        length_logits = text_model.length_logits(input_ids, input_mask)  # [B, L+1]
        input_mask = span_mask(input_ids, input_mask, pad)
    x_start_mean = text_model.get_embeds(input_ids)
    if noise0 is None:
        noise0 = torch.randn(
            x_start_mean.shape,
            generator=generator,
            dtype=x_start_mean.dtype,
            device=x_start_mean.device,
        )
    x_start = diffusion.get_x_start(x_start_mean, noise0=noise0)
    if noise is None:
        noise = torch.randn(
            x_start.shape, generator=generator, dtype=x_start.dtype, device=x_start.device
        )
    x_t = diffusion.q_sample(
        x_start,
        t,
        noise=noise,
        mask=input_mask,
        mean_embed=mean_embed,
        bernoulli_draw=bernoulli_draw,
        generator=generator,
    )
    timesteps = diffusion.scale_timesteps(t)
    if getattr(text_model, "self_cond", False):
        condition = self_condition(text_model, x_t, timesteps, generator)
        model_output = model(x_t, timesteps, self_cond=condition)
    else:
        model_output = model(x_t, timesteps)
    assert model_output.shape == x_start.shape

    t0_loss = mean_flat((x_start_mean - model_output) ** 2)
    mse = torch.where(t == 0, t0_loss, mean_flat((x_start - model_output) ** 2))
    last = torch.full((1,), diffusion.num_timesteps - 1, dtype=torch.long, device=x_start.device)
    prior_mean, _, _ = diffusion.q_mean_variance(x_start, last)
    tT_loss = mean_flat(prior_mean**2)
    decoder_nll, nll = _token_losses(
        text_model, x_start, model_output, input_ids, input_mask, anchor=anchor_loss
    )
    terms = {
        "loss": mse + (decoder_nll + tT_loss),
        "mse": mse,
        "nll": nll.detach(),
        "decoder_nll": decoder_nll,
        "tT_loss": tT_loss,
        "t0_loss": t0_loss,
    }
    if anchor_loss:
        terms["anchor_loss"] = nll
        terms["loss"] = terms["loss"] + nll
    if length_loss_weight is not None:
        lengths = input_mask.long().sum(dim=-1)  # n = Σ_L m' [B]
        terms["length_loss"] = length_losses(length_logits, lengths)
        terms["loss"] = terms["loss"] + length_loss_weight * terms["length_loss"]
    if mean_embed is not None:
        terms["reg_term"] = diffusion.reg_rate * torch.norm(mean_embed)
        terms["loss"] = terms["loss"] + terms["reg_term"]
    return terms
