"""The target-length predictor of ``--length_predict`` (beyond the original).

Difformer (Gao et al. 2022, arXiv 2212.09412, §3) predicts the target length from the encoded
source, as CMLM (Ghazvininejad et al. 2019) does; DiffuSeq's denoiser has no separate encoder,
so a small one is added here: the source's word embeddings (given by the denoiser, detached) plus
learned position embeddings, one transformer encoder layer restricted to the source positions,
a masked mean pool and a linear map to logits over the lengths ``0..max_positions``. The math of
the loss and of the length beam is in :mod:`diffuseq.diffusion.length`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LengthPredictor"]


class LengthPredictor(nn.Module):
    """Source embeddings ``[B, L, h]`` -> length logits ``[B, L + 1]``.

    Args (keyword-only):
        hidden_dim: ``h``, the word-embedding size.
        max_positions: the longest sequence ``P`` (the denoiser's position table); the
            logits cover lengths ``0..P`` and :meth:`forward` returns the first ``L + 1``.
        dropout: dropout of the encoder layer.
    """

    def __init__(self, *, hidden_dim: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        heads = next(n for n in (4, 2, 1) if hidden_dim % n == 0)
        self.position_embeddings = nn.Embedding(max_positions, hidden_dim)
        self.layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            dim_feedforward=4 * hidden_dim,
            dropout=dropout,
            batch_first=True,
        )
        self.proj = nn.Linear(hidden_dim, max_positions + 1)

    def forward(self, embeds: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Length logits from the source positions only.

        Args:
            embeds: word embeddings ``[B, L, h]`` (the caller detaches them).
            source: ``[B, L]`` bool, True on the source positions (at least one per row).

        Returns:
            float ``[B, L + 1]``: logits over target lengths ``0..L``.
        """
        L = embeds.shape[1]
        x = embeds + self.position_embeddings.weight[:L]  # [B, L, h]
        x = self.layer(x, src_key_padding_mask=~source)  # [B, L, h]; targets are never keys
        keep = source.unsqueeze(-1)  # [B, L, 1]
        count = keep.sum(dim=1).clamp(min=1).to(x.dtype)  # [B, 1]
        pooled = x.masked_fill(~keep, 0.0).sum(dim=1) / count  # [B, h]
        return self.proj(pooled)[:, : L + 1]  # [B, L + 1]
