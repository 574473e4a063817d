"""One call from a batch of encoded rows to the sampled ``x_0``: what every decoder goes through.

:func:`wrap_model` assembles the ``model(x, t)`` callable the samplers see from what the model
and the process say (self-conditioning, the noise floor, autocast), so the decode job, the
Python API and direct users of :func:`diffuseq.sampling.get_sampler` decode alike;
:func:`sample_x0` builds ``x_T`` from per-row noise streams and runs the configured sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from diffuseq.config.decode import DTYPES
from diffuseq.sampling import run_sampler
from diffuseq.sampling.noise import NoiseSource
from diffuseq.sampling.noise_floor import NoiseFloored, noise_floor_time
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.sampling.self_cond import SelfConditioned

if TYPE_CHECKING:
    from diffuseq.config.decode import DecodeConfig
    from diffuseq.diffusion.gaussian import GaussianDiffusion

__all__ = ["Autocast", "sample_x0", "torch_dtype", "wrap_model"]


def torch_dtype(name: str) -> torch.dtype:
    """The autocast dtype of ``--dtype name`` (:data:`diffuseq.config.decode.DTYPES`)."""
    return getattr(torch, DTYPES[name])


class Autocast:
    """``model(x, t)`` under ``torch.autocast`` (bf16/fp16), returning fp32."""

    def __init__(self, model: Callable, dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.dtype, self.device_type = model, dtype, device.type

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x, t).float()


def wrap_model(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    *,
    noise_floor: float = 0.0,
    dtype: str = "fp32",
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ``model(x, t)`` callable for one sampling run (make a new one per batch).

    In order: :class:`SelfConditioned` when the model was trained with ``self_cond`` (each call
    sees the previous x̂_0), :class:`NoiseFloored` when ``noise_floor > 0`` (the network is
    told ``max(t, t_min)``), :class:`Autocast` for ``dtype`` bf16/fp16.
    """
    wrapped = SelfConditioned(model) if getattr(model, "self_cond", False) else model
    if noise_floor > 0:
        wrapped = NoiseFloored(wrapped, noise_floor_time(diffusion, noise_floor))
    if dtype != "fp32":
        device = next(model.parameters()).device
        wrapped = Autocast(wrapped, torch_dtype(dtype), device)
    return wrapped


@torch.no_grad()
def sample_x0(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    *,
    seeds: Sequence[int],
    indices: Sequence[int],
    config: DecodeConfig,
    noise_floor: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample ``x_0 [B, L, h]`` for rows ``input_ids``/``input_mask [B, L]`` (model's device).

    ``x̄_0 = EMB(ids)``, ``x_T = where(m == 0, x̄_0, z)`` with ``z`` the first draw of row
    ``r``'s stream ``(seeds[r], indices[r])``; then the sampler ``config.label`` (resolved
    config) with rounding to the nearest word embedding. ``noise_floor`` defaults to the
    process's (``diffusion.noise_floor``).
    """
    device = next(model.parameters()).device
    ids, mask = input_ids.to(device), input_mask.to(device)
    x_start = model.get_embeds(ids).float()  # x̄_0 [B, L, h]
    noise = NoiseSource(seeds, indices, shape=tuple(x_start.shape[1:]), device=device)
    x_T = torch.where(mask.unsqueeze(-1) == 0, x_start, noise.gaussian())
    floor = getattr(diffusion, "noise_floor", 0.0) if noise_floor is None else noise_floor
    return run_sampler(
        config.label,
        wrap_model(model, diffusion, noise_floor=floor, dtype=config.dtype),
        diffusion,
        x_T,
        input_mask=mask,
        x_start=x_start,
        clamp_step=config.clamp_step,
        noise=noise,
        progress=progress,
        denoised_fn=make_rounding_fn(model.word_embedding.weight),
        steps=config.steps,
        top_p=config.noise_top_p,
        mean_embed=getattr(model, "mean_embed", None),
    )
