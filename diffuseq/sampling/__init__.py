"""Sampling loops of DiffuSeq: plain no-grad functions with one shared signature.

``sampler(inputs: SamplerInputs) -> x_0 [B,L,h]``

* :mod:`~diffuseq.sampling.table`: one row per sampler (name, function, whether it draws
  noise, whether it takes a step count, help); :func:`get_sampler` and :data:`SAMPLERS`
  read it. Torch-free, as is this package's ``__init__`` (the command lines import it).
* :class:`~diffuseq.sampling.inputs.SamplerInputs`: the batch (raw model, process, ``x_T``,
  mask, anchor) and the options (rounding, clamp step, noise stream, callback, steps, top_p,
  μ, dtype); each sampler reads the fields its row says it uses. The sampler wraps the raw
  model itself (self-conditioning, noise floor, autocast:
  :func:`~diffuseq.sampling.inputs.wrap_model`).
* :func:`diffuseq.sampling.run.sample_x0`: from encoded rows to ``x_0`` (the decode job's path).

Only the final state is returned; the caller turns it into tokens with ``get_logits``.

Example::

    from diffuseq import SamplerInputs, get_sampler

    x_0 = get_sampler("dpm-solver++")(
        SamplerInputs(model, diffusion, x_T, input_mask=mask, x_start=x_start, steps=10)
    )
"""

from __future__ import annotations

import importlib
from typing import Any

from diffuseq.sampling.table import (
    SAMPLER_TABLE,
    SAMPLERS,
    SamplerRow,
    get_sampler,
    sampler_names,
    sampler_row,
)

__all__ = [
    "SAMPLERS",
    "SAMPLER_TABLE",
    "SamplerInputs",
    "SamplerRow",
    "get_sampler",
    "sampler_names",
    "sampler_row",
]


def __getattr__(name: str) -> Any:
    # SamplerInputs needs torch: imported on first use so that the table stays torch-free.
    if name == "SamplerInputs":
        return importlib.import_module("diffuseq.sampling.inputs").SamplerInputs
    raise AttributeError(f"module 'diffuseq.sampling' has no attribute {name!r}")
