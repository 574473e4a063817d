"""The network of the discrete family: DiffuSeq's transformer body over token ids.

:class:`MaskedTokenDenoiser` is :class:`~diffuseq.models.denoiser.TransformerNetModel` (word
embedding, BERT encoder without attention mask, tied read-out, the same state-dict keys) that
reads the ids of a partially masked sequence and returns logits over the text vocabulary:

    logits = read_out(body(EMB(x_t), t = 0))[..., :V]

* **The [MASK] token** is an extra embedding row, id ``V`` (the tokenizer's vocabulary size):
  the word embedding and the tied read-out have ``V + 1`` rows, and the read-out drops the
  last column, so ``[MASK]`` is never predicted. This works for every tokenizer alike
  (word-level vocab files have no mask token; BERT's ``[MASK]`` id 103 stays an ordinary text
  token), keeps the mask id a function of the run config (``vocab_size``), and leaves the
  tokenizers untouched. With ``--use_plm_init bert`` the first ``V`` rows are BERT's.
* **No timestep input**: RDM's network conditions on ``x_t`` only (the number of masks says
  the level; RADD, Ou et al. 2024, shows the absorbing-state optimum is time-independent).
  The body is called with ``t = 0``, so its time MLP is a learned constant bias; keeping it
  keeps the Gaussian family's keys, so checkpoints, model folders and the tied-weight rule
  work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffuseq.models.denoiser import TransformerNetModel

__all__ = ["MaskedTokenDenoiser"]


class MaskedTokenDenoiser(TransformerNetModel):
    """``x_t`` ids ``[B, L]`` -> logits ``[B, L, V]`` (module docstring).

    Args (keyword-only): those of :class:`TransformerNetModel`, with ``vocab_size`` the text
    vocabulary ``V`` (the embedding gets ``V + 1`` rows); ``learned_mean_embed``,
    ``self_cond``, ``embedding_norm`` and ``length_predict`` are Gaussian-family options and are not accepted.
    """

    def __init__(self, *, vocab_size: int, **kwargs: Any) -> None:
        for option in ("learned_mean_embed", "self_cond", "embedding_norm", "length_predict"):
            if kwargs.pop(option, False):
                raise ValueError(f"{option} is an option of the Gaussian family only")
        super().__init__(vocab_size=vocab_size, **kwargs)
        self.vocab_size = vocab_size  # V: the text vocabulary, logits' last dimension
        self.mask_token_id = vocab_size  # the extra row
        self._append_mask_row()

    def _append_mask_row(self) -> None:
        """Grow the tied embedding / read-out from ``V`` to ``V + 1`` rows in place (the module
        slots keep their state-dict order). The new row is drawn like the others' scale:
        ``N(0, std(E)²)``; its read-out bias is 0 (that column is never used)."""
        weight = self.word_embedding.weight.detach()  # [V, h]
        row = torch.empty(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
        nn.init.normal_(row, mean=0.0, std=float(weight.float().std()))
        self.word_embedding = nn.Embedding.from_pretrained(torch.cat([weight, row]), freeze=False)
        bias = self.lm_head.bias.detach()
        head = nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0] + 1, device=weight.device
        )
        head.weight = self.word_embedding.weight  # tied: one Parameter, two keys
        head.bias = nn.Parameter(torch.cat([bias, bias.new_zeros(1)]))
        self.lm_head = head

    def forward(self, input_ids: torch.Tensor, *, read_out: bool = True) -> torch.Tensor:
        """Predict ``x_0`` from the ids of ``x_t``.

        Args:
            input_ids: int64 ``[B, L]`` (``mask_token_id`` at the masked positions).
            read_out: ``False`` returns the body's output ``[B, L, h]`` (for a loss that reads
                out only some positions, :meth:`logits_projection`).

        Returns:
            logits ``[B, L, V]`` (or ``[B, L, h]``).
        """
        x = self.get_embeds(input_ids)  # [B, L, h]
        no_time = torch.zeros(input_ids.shape[0], device=input_ids.device)  # [B]
        hidden = super().forward(x, no_time)  # [B, L, h]
        return self.get_logits(hidden) if read_out else hidden

    def get_logits(self, hidden_repr: torch.Tensor) -> torch.Tensor:
        """``z·E[:V]ᵀ + b[:V]``: ``[..., h]`` -> ``[..., V]`` (no ``[MASK]`` column)."""
        weight, bias = self.logits_projection()
        return F.linear(hidden_repr, weight, bias)

    def logits_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[:V] [V, h], b[:V] [V])``: the read-out over the text vocabulary."""
        V = self.vocab_size
        return self.lm_head.weight[:V], self.lm_head.bias[:V]
