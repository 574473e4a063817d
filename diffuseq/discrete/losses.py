"""Training objectives of the discrete family (RDM, Zheng et al. 2023, §4).

For ``t ~ U{1..T}``, ``x_t ~ q(x_t | x_0)`` (:meth:`AbsorbingDiffusion.q_sample`) and
``b_{t,n} = 1`` where ``x_{t,n}`` is still clean, the reparameterized objective is a
cross-entropy on the *noisy* tokens only, reweighted per level:

    L_t = λ_t · Σ_n (1 − b_{t,n}) · m_n · CE(f_θ(x_t)_n, x_{0,n}) / Σ_n m_n

* ``rdm`` (default): RDM's linear reweighting ``λ_t = 1 − (t − 1)/T``, which replaces the
  ELBO's ``λ_{t−1}`` (the paper's §4: the reweighting matters more than the exact bound for
  text generation);
* ``elbo``: the vanilla absorbing-diffusion objective (D3PM-absorbing, Austin et al. 2021;
  MDLM, Sahoo et al. 2024): ``λ_t = T·(α_{t−1} − α_t)/(1 − α_t)`` (``T/t``, MDLM's ``1/u``, for the
  linear schedule), whose expectation over ``t`` is the ELBO's per-token bound on ``−log p(y|x)``.

The sum is divided by the number of target-span positions ``Σ m`` (a per-example constant:
target tokens and padding, all of which the network predicts, as DiffuSeq), so that an
``elbo`` loss reads as nats per target position. The network conditions on ``x_t`` only
(no timestep), as RDM's; its output at clean positions is never trained. Source positions are
never noised and never in the loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from diffuseq.discrete import LOSS_NAMES
from diffuseq.ops.linear_cross_entropy import linear_cross_entropy

if TYPE_CHECKING:
    from diffuseq.discrete.process import AbsorbingDiffusion

__all__ = ["LOSSES", "discrete_losses", "noisy_token_ce"]

#: ``--discrete_loss`` name -> what it is (the weight is :func:`discrete_losses`'s).
LOSSES: dict[str, str] = {
    "rdm": "RDM's reweighted cross-entropy on the noisy tokens, λ_t = 1 − (t − 1)/T",
    "elbo": "the vanilla absorbing-diffusion ELBO (D3PM / MDLM), λ_t = T·(α_{t−1} − α_t)/(1 − α_t)",
}
assert tuple(LOSSES) == LOSS_NAMES, "diffuseq.discrete.LOSS_NAMES lists the losses"


def noisy_token_ce(
    text_model: Any, hidden: torch.Tensor, targets: torch.Tensor, noisy: torch.Tensor
) -> torch.Tensor:
    """``CE(read_out(hidden_n), targets_n)`` at the noisy positions, 0 elsewhere.

    Models with ``logits_projection() -> (W [V, h], b [V])`` get the chunked
    :func:`~diffuseq.ops.linear_cross_entropy.linear_cross_entropy` on the noisy rows only
    (no ``[B, L, V]`` logits); others go through ``get_logits``.

    Args:
        hidden: ``[B, L, h]``; targets: int64 ``[B, L]``; noisy: bool ``[B, L]``.

    Returns:
        float32 ``[B, L]``.
    """
    keep = noisy.reshape(-1)  # [B·L]
    rows = hidden.reshape(-1, hidden.shape[-1])[keep]  # [K, h]
    wanted = targets.reshape(-1)[keep]  # [K]
    projection = getattr(text_model, "logits_projection", None)
    if projection is not None:
        weight, bias = projection()
        ce = linear_cross_entropy(rows, weight, bias, wanted)  # [K]
    else:
        ce = F.cross_entropy(text_model.get_logits(rows).float(), wanted, reduction="none")
    flat = torch.zeros(keep.shape, dtype=torch.float32, device=hidden.device)
    return flat.masked_scatter(keep, ce.float()).view(targets.shape)


def discrete_losses(
    process: AbsorbingDiffusion,
    model: Any,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    t: torch.Tensor,
    *,
    text_model: Any = None,
    loss: str = "rdm",
    uniforms: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms of one batch at levels ``t``.

    Steps: (1) ``x_t, noisy = q_sample(x_0, m, t)``; (2) ``h = model(x_t, read_out=False)``
    ``[B, L, h]``; (3) ``ce_n`` on the noisy positions (:func:`noisy_token_ce`); (4)
    ``S = Σ_n ce_n``; ``loss = λ_t·S/Σm`` (module docstring).

    Args:
        process: the forward process (``T``, ``α``).
        model: called as ``model(x_t, read_out=False) -> [B, L, h]`` (may be a DDP wrapper).
        input_ids: ``x_0`` int64 ``[B, L]``; input_mask: ``m [B, L]``; t: int64 ``[B]`` in ``1..T``.
        text_model: the unwrapped model (its read-out and ``mask_token_id``; default ``model``).
        loss: ``"rdm"`` or ``"elbo"`` (:data:`LOSSES`).
        uniforms: the masking draws ``[B, L]`` (default: the global RNG).

    Returns:
        float32 ``[B]`` terms: ``loss`` (optimised), ``nll`` (the ELBO-weighted value, the
        per-position bound, logged for either loss), ``ce`` (mean CE over the noisy tokens, 0
        for a row without any), ``mask_rate`` (noisy fraction of the target span).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown discrete loss {loss!r}; choose one of {', '.join(LOSSES)}")
    text_model = model if text_model is None else text_model
    x_t, noisy = process.q_sample(
        input_ids, input_mask, t, mask_token_id=text_model.mask_token_id, uniforms=uniforms
    )
    hidden = model(x_t, read_out=False)  # [B, L, h]
    ce = noisy_token_ce(text_model, hidden, input_ids, noisy)  # [B, L], 0 where clean
    total = ce.sum(dim=-1)  # S [B]
    span = input_mask.float().sum(dim=-1).clamp_min(1.0)  # Σ m [B]
    count = noisy.float().sum(dim=-1)  # [B]
    elbo = process.elbo_weight(t) * total / span
    weight = process.rdm_weight(t) if loss == "rdm" else process.elbo_weight(t)
    return {
        "loss": weight * total / span,
        "nll": elbo.detach(),
        "ce": (total / count.clamp_min(1.0)).detach(),
        "mask_rate": count / span,
    }
