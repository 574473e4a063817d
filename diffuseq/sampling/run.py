"""One call from a batch of encoded rows to the sampled ``x_0``: what every decoder goes through.

:func:`sample_x0` builds ``x_T`` from per-row noise streams and runs the resolved config's
sampler (:func:`~diffuseq.sampling.table.get_sampler`) on the raw model; the sampler assembles
the model's wrappers itself (:func:`~diffuseq.sampling.inputs.wrap_model`), so the decode job,
the Python API and direct users of :func:`diffuseq.get_sampler` decode alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from diffuseq.sampling.inputs import SamplerInputs
from diffuseq.sampling.noise import NoiseSource
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.sampling.table import get_sampler

if TYPE_CHECKING:
    from diffuseq.config.decode import ResolvedDecode
    from diffuseq.diffusion.gaussian import GaussianDiffusion

__all__ = ["RowBatch", "sample_x0"]


@dataclass(frozen=True)
class RowBatch:
    """One batch of decode rows (an ``(example, candidate)`` pair each).

    Attributes:
        input_ids: int64 ``[B, L]``, the merged ``x [SEP] y`` layout: the source (mask 0) and
            the target span (mask 1, its ids are not to be read).
        input_mask: ``[B, L]`` 0 = source side, 1 = target span and padding.
        seeds, indices: row ``r`` draws all its randomness from the stream of
            ``(seeds[r], indices[r])`` (:class:`~diffuseq.sampling.noise.NoiseSource`), so that
            a row's output does not depend on its batch.
    """

    input_ids: torch.Tensor
    input_mask: torch.Tensor
    seeds: Sequence[int]
    indices: Sequence[int]

    def to(self, device: torch.device | str) -> RowBatch:
        """The same rows with the tensors on ``device``."""
        return replace(
            self, input_ids=self.input_ids.to(device), input_mask=self.input_mask.to(device)
        )


@torch.no_grad()
def sample_x0(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    rows: RowBatch,
    *,
    config: ResolvedDecode,
    progress: bool = False,
) -> torch.Tensor:
    """Sample ``x_0 [B, L, h]`` for ``rows`` (on the model's device).

    ``x̄_0 = EMB(ids)``, ``x_T = where(m == 0, x̄_0, z)`` with ``z`` the first draw of row
    ``r``'s stream; then the sampler ``config.sampler`` with rounding to the nearest word
    embedding (``model.embedding_table()``: ``LN(E)`` with ``embedding_norm``), v2's μ
    (``model.mean_embed``), the process's noise floor and the model's self-conditioning.
    """
    device = next(model.parameters()).device
    ids, mask = rows.input_ids.to(device), rows.input_mask.to(device)
    x_start = model.get_embeds(ids).float()  # x̄_0 [B, L, h]
    noise = NoiseSource(rows.seeds, rows.indices, shape=tuple(x_start.shape[1:]), device=device)
    x_T = torch.where(mask.unsqueeze(-1) == 0, x_start, noise.gaussian())
    inputs = SamplerInputs(
        model,
        diffusion,
        x_T,
        input_mask=mask,
        x_start=x_start,
        denoised_fn=make_rounding_fn(model.embedding_table()),
        clamp_step=config.clamp_step,
        noise=noise,
        progress=progress,
        steps=config.steps,
        top_p=config.noise_top_p,
        mean_embed=getattr(model, "mean_embed", None),
        dtype=config.dtype,
    )
    return get_sampler(config.sampler)(inputs)
