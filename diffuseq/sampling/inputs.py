"""What every sampler receives (:class:`SamplerInputs`) and the ``model(x, t)`` it calls.

:func:`wrap_model` is the one place the decode-time wrappers of a model are assembled from what
the model and the process say: self-conditioning (the model was built with ``self_cond``), the
noise floor (``diffusion.noise_floor``), autocast (``dtype``). Every registered sampler calls it
through :meth:`SamplerInputs.network` on the raw model it is given, so the decode job, the
Python API and direct callers of :func:`diffuseq.get_sampler` decode alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from diffuseq.config.decode import DTYPES
from diffuseq.sampling.common import Callback, Model
from diffuseq.sampling.noise_floor import NoiseFloored, noise_floor_time
from diffuseq.sampling.self_cond import SelfConditioned

if TYPE_CHECKING:
    from diffuseq.diffusion.gaussian import DenoisedFn, GaussianDiffusion
    from diffuseq.sampling.noise import NoiseStream

__all__ = ["Autocast", "SamplerInputs", "torch_dtype", "wrap_model"]


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
    model: Callable[..., torch.Tensor],
    diffusion: GaussianDiffusion,
    *,
    dtype: str = "fp32",
    device: torch.device | None = None,
) -> Model:
    """The ``model(x, t)`` callable for one sampling run (make a new one per run).

    In order: :class:`SelfConditioned` when the model was built with ``self_cond`` (each call
    sees the previous x̂_0), :class:`NoiseFloored` when ``diffusion.noise_floor > 0`` (the
    network is told ``max(t, t_min)``), :class:`Autocast` for ``dtype`` bf16/fp16 on ``device``
    (default: the model's). A plain callable without these attributes passes unchanged.
    """
    wrapped = SelfConditioned(model) if getattr(model, "self_cond", False) else model
    noise_floor = getattr(diffusion, "noise_floor", 0.0)
    if noise_floor > 0:
        wrapped = NoiseFloored(wrapped, noise_floor_time(diffusion, noise_floor))
    if dtype != "fp32":
        device = next(model.parameters()).device if device is None else device
        wrapped = Autocast(wrapped, torch_dtype(dtype), device)
    return wrapped


@dataclass(frozen=True)
class SamplerInputs:
    """The batch a sampler decodes and the options every sampler reads (one signature:
    ``sampler(inputs) -> x_0 [B,L,h]``; :mod:`diffuseq.sampling.table` lists them).

    Attributes:
        model: the network ``model(x [B,L,h], timesteps float32 [B]) -> x̂_0 [B,L,h]``, as
            trained (a ``TransformerNetModel``, or any such callable): the sampler wraps it
            (:meth:`network`).
        diffusion: the process (:class:`~diffuseq.diffusion.gaussian.GaussianDiffusion`; its
            ``noise_floor`` is applied to the network's time input).
        x_T: ``[B,L,h]`` start state ``where(m == 0, x_start, z)``, ``z ~ N(0, I)``.
        input_mask: ``[B,L]`` 0 = source side (kept equal to ``x_start``), 1 = target, padding.
        x_start: ``[B,L,h]`` the anchor, the clean embeddings x̄_0 = EMB(w) (docs/original.md §5.11).
        denoised_fn: rounding to the nearest word embedding (:mod:`diffuseq.sampling.rounding`),
            applied to x̂_0 at levels ``t ≥ clamp_step`` (the original's ``clamp_first=True``).
        clamp_step: see ``denoised_fn`` (0: every step).
        noise: a :class:`~diffuseq.sampling.noise.NoiseStream` (per-example generators); read
            only by the samplers whose row draws noise.
        callback: ``callback(info: dict)`` after every step (keys ``step, t, sample,
            pred_xstart`` and ``tokens`` when rounding ran); the loops never keep the T
            intermediate states the original returns (docs/original.md §5.11).
        progress: show a progress bar (callers pass ``rank == 0``).
        steps: model calls of the samplers that take a step count (ancestral runs all T).
        top_p: the original's noise truncation (``None``: off) of the samplers that draw noise.
        mean_embed: μ ``[h]`` of a v2 model (``None`` for v1), for the samplers that shift by it.
        dtype: autocast dtype of the network (``fp32``, ``bf16``, ``fp16``).
    """

    model: Callable[..., torch.Tensor]
    diffusion: GaussianDiffusion
    x_T: torch.Tensor
    input_mask: torch.Tensor
    x_start: torch.Tensor
    denoised_fn: DenoisedFn | None = None
    clamp_step: int = 0
    noise: NoiseStream | None = None
    callback: Callback | None = None
    progress: bool = False
    steps: int | None = None
    top_p: float | None = None
    mean_embed: torch.Tensor | None = None
    dtype: str = "fp32"

    def network(self) -> Model:
        """A fresh ``model(x, t)`` for one run: :func:`wrap_model` of :attr:`model`."""
        return wrap_model(self.model, self.diffusion, dtype=self.dtype, device=self.x_T.device)

    def step_count(self, sampler: str) -> int:
        """:attr:`steps`; ``ValueError`` naming ``sampler`` when it is not set."""
        if self.steps is None:
            raise ValueError(f"{sampler} runs a given number of steps: pass steps=N")
        return self.steps

    def noise_stream(self, sampler: str) -> NoiseStream:
        """:attr:`noise`; ``ValueError`` naming ``sampler`` when it is not set."""
        if self.noise is None:
            raise ValueError(f"{sampler} draws noise at every step: pass noise=NoiseSource(...)")
        return self.noise
